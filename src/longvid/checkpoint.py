"""Atomic, exactly-resumable training checkpoints.

A checkpoint is a folder `step-000123/` holding the model in `save_pretrained` layout (safetensors;
only the adapter weights for LoRA), and `state.pt` with the optimizer, scheduler, RNG states, step
and data position, loadable with `weights_only=True`. It is written to a temporary folder and
renamed into place, and `latest` is replaced atomically, so a crash never leaves a half checkpoint
that resume would pick up.

`latest` is a relative symlink (`latest -> step-000123`), so `checkpoints/latest/model` works
wherever a model folder is taken; the plain-text pointer older runs wrote is still read. A write
that fails (disk full, permission denied) raises `CheckpointError` naming the cause and the path,
removes its temporary folder and leaves `latest` and the previous checkpoints as they were.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from .errors import LongvidError
from .model.folder import write_model_meta

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"  # a checkpoint being written; one left behind belongs to a killed writer


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))


class CheckpointError(LongvidError):
    """A checkpoint could not be written; the message names the cause and the path."""


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    tokenizer: Any,
    state: dict[str, Any],
    keep: int = 2,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write `out_dir/step-{step}` atomically and point `out_dir/latest` at it. `meta` is written
    as `model/longvid.json` (how the model was trained)."""
    out_dir = Path(out_dir)
    final = out_dir / f"step-{step:06d}"
    tmp = out_dir / f"{TMP_PREFIX}step-{step:06d}-{os.getpid()}"
    with _named_write_errors(out_dir, tmp):
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp / "model"), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / "model"))
        if meta is not None:
            write_model_meta(tmp / "model", meta)
        torch.save({**state, "step": step, "rng": rng_state()}, tmp / "state.pt")
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _point_latest(out_dir, final)
    _prune(out_dir, keep, final)
    log.info("saved checkpoint %s", final)
    return final


def _point_latest(out_dir: Path, final: Path) -> None:
    """Replace `latest` by a relative symlink to `final` in one rename (readers never see it missing)."""
    pointer = out_dir / ".latest.tmp"
    pointer.unlink(missing_ok=True)
    os.symlink(final.name, pointer, target_is_directory=True)
    os.replace(pointer, out_dir / "latest")


def _disk_full(path: Path) -> bool:
    try:
        return shutil.disk_usage(path).free < 16 * 2**20
    except OSError:
        return False


@contextlib.contextmanager
def _named_write_errors(out_dir: Path, tmp: Path):
    """Turn a failed write into a CheckpointError that says why (disk full, permission denied) and
    where, after removing the half-written temporary folder."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        code = getattr(e, "errno", None)
        # torch.save reports a full disk as a RuntimeError from its zip writer ("unexpected pos").
        if code in (errno.ENOSPC, errno.EDQUOT) or (code is None and _disk_full(out_dir)):
            cause = "no space left on device"
        elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
            cause = "permission denied" if code != errno.EROFS else "read-only file system"
        else:
            cause = f"{type(e).__name__}: {e}"
        where = getattr(e, "filename", None) or tmp
        raise CheckpointError(
            f"{cause} while writing checkpoint {where}; the previous checkpoint "
            f"({_latest_name(out_dir) or 'none'}) is unchanged"
        ) from e


def _latest_name(out_dir: Path) -> str | None:
    try:
        path = latest_checkpoint(out_dir)
    except FileNotFoundError:
        return None
    return path.name if path is not None else None


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint `latest` points at (symlink, or the text pointer of older runs); None if none."""
    pointer = Path(out_dir) / "latest"
    if pointer.is_symlink():
        name = os.readlink(pointer)
    elif pointer.is_file():
        name = pointer.read_text().strip()
    else:
        return None
    path = Path(out_dir) / name
    if not (path / "state.pt").is_file():
        raise FileNotFoundError(f"{pointer} points at {path}, which is not a complete checkpoint")
    return path


def clean_stale_tmp(out_dir: str | Path) -> list[Path]:
    """Remove temporary folders a killed writer left behind. Call only while holding the run's lock."""
    out_dir = Path(out_dir)
    stale = sorted(p for p in out_dir.glob(f"{TMP_PREFIX}*") if p.is_dir()) if out_dir.is_dir() else []
    for path in stale:
        log.warning("removing %s, left by a checkpoint write that never finished", path)
        shutil.rmtree(path, ignore_errors=True)
    return stale


def load_state(path: str | Path) -> dict[str, Any]:
    return torch.load(Path(path) / "state.pt", weights_only=True, map_location="cpu")


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())


def _step_of(path: Path) -> int:
    try:
        return int(path.name.removeprefix("step-"))
    except ValueError:
        return -1


def _prune(out_dir: Path, keep: int, written: Path) -> None:
    """Keep the `keep` newest checkpoints by step number, and always the one just written."""
    if keep <= 0:
        return
    steps = sorted((p for p in out_dir.glob("step-*") if p.is_dir() and _step_of(p) >= 0), key=_step_of)
    keep_set = set(steps[-keep:]) | {written}
    for old in steps:
        if old not in keep_set:
            shutil.rmtree(old, ignore_errors=True)


def load_model_weights(model: torch.nn.Module, folder: str | Path) -> None:
    """Load weights saved by `save_checkpoint` into `model` (full model or a peft LoRA adapter)."""
    folder = Path(folder)
    adapter_file = folder / "adapter_model.safetensors"
    if adapter_file.is_file():
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        result = set_peft_model_state_dict(model, load_file(str(adapter_file)))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise RuntimeError(f"{adapter_file}: unexpected keys {unexpected[:5]}")
        return
    if not any(folder.glob("model*.safetensors")):
        raise FileNotFoundError(f"{folder}: no model*.safetensors to resume from")
    # from_pretrained applies the checkpoint key conversions that save_pretrained applied.
    saved = type(model).from_pretrained(str(folder), dtype=next(model.parameters()).dtype, use_safetensors=True)
    model.load_state_dict(saved.state_dict())
