"""Atomic, exactly-resumable training checkpoints, for one process or many.

A checkpoint is a folder `step-000123/` holding
- the model and optimizer: in `save_pretrained` layout (`model/`, safetensors; only the adapter
  weights for LoRA) with the optimizer in `state.pt` when parameters are whole on every rank, or
  as a `torch.distributed.checkpoint` folder (`dcp/`, every rank writes its own shards) when they
  are FSDP-sharded;
- `state.pt` (rank 0): scheduler, step, data position and whatever the recipe adds;
- `rank-00000.pt`, one per rank: that rank's RNG states (torch CPU, CUDA, python) and the
  recipe's per-rank state (e.g. each data-parallel rank's sampling generator).
Every file loads with `weights_only=True`. It is written to a temporary folder and renamed into
place, and `latest` is replaced atomically, so a crash never leaves a half checkpoint that
resume would pick up. With several processes the folder must be on a filesystem they share.

`export_pretrained` writes one plain `save_pretrained` folder (full weights gathered, LoRA merged)
that `from_pretrained` and `longvid eval` load.

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
import torch.distributed as dist

from .errors import LongvidError
from .model.folder import write_model_meta

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"  # a checkpoint being written; one left behind belongs to a killed writer


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if _world()[1] > 1:
        dist.barrier()


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's current device
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def rank_file(path: Path, rank: int) -> Path:
    return Path(path) / f"rank-{rank:05d}.pt"


class CheckpointError(LongvidError):
    """A checkpoint could not be written; the message names the cause and the path."""


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    tokenizer: Any,
    state: dict[str, Any],
    keep: int = 2,
    *,
    meta: dict[str, Any] | None = None,
    rank_state: dict[str, Any] | None = None,
    sharded: dict[str, Any] | None = None,
) -> Path:
    """Write `out_dir/step-{step}` atomically and point `out_dir/latest` at it; every rank calls it.

    `state` is written by rank 0, `rank_state` (plus the RNG states) by every rank. `sharded`, a
    state dict of DTensors (model and optimizer under FSDP), goes to `dcp/` collectively;
    without it rank 0 saves `model` with `save_pretrained`. `meta` (how the model was trained) is
    written as `longvid.json` beside the tokenizer.
    """
    rank, _ = _world()
    out_dir = Path(out_dir)
    final = out_dir / f"step-{step:06d}"
    tmp = out_dir / f"{TMP_PREFIX}step-{step:06d}"  # one name on every rank
    with _named_write_errors(out_dir, tmp):
        if rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        _barrier()
        if sharded is not None:
            import torch.distributed.checkpoint as dcp

            dcp.save(sharded, checkpoint_id=str(tmp / "dcp"))
        elif rank == 0:
            model.save_pretrained(str(tmp / "model"), safe_serialization=True)
        if rank == 0:
            folder = tmp / ("model" if sharded is None else "tokenizer")
            if tokenizer is not None:
                tokenizer.save_pretrained(str(folder))
            if meta is not None:
                write_model_meta(folder, meta)
            torch.save({**state, "step": step}, tmp / "state.pt")
        torch.save({**(rank_state or {}), "rng": rng_state()}, rank_file(tmp, rank))
        _barrier()
        if rank == 0:
            _fsync_tree(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _point_latest(out_dir, final)
            _prune(out_dir, keep, final)
            log.info("saved checkpoint %s", final)
    _barrier()
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


def load_rank_state(path: str | Path) -> dict[str, Any]:
    """This rank's file; a checkpoint written by a different number of ranks is refused."""
    rank, world = _world()
    saved = len(list(Path(path).glob("rank-*.pt")))
    if saved != world:
        raise ValueError(f"{path} was saved by {saved} ranks; this job has {world}: resume on the same world size")
    return torch.load(rank_file(path, rank), weights_only=True, map_location="cpu")


def load_sharded(path: str | Path, sharded: dict[str, Any]) -> None:
    """Fill the DTensor state dict `sharded` in place from `path/dcp` (every rank reads its shards)."""
    import torch.distributed.checkpoint as dcp

    folder = Path(path) / "dcp"
    if not folder.is_dir():
        raise FileNotFoundError(f"{path}: no dcp/ folder — it was saved without FSDP (set parallel.fsdp accordingly)")
    dcp.load(sharded, checkpoint_id=str(folder))


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


# ------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------
def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer whole, on the CPU, on rank 0 (`{}` elsewhere when sharded).
    Collective when the model is FSDP-sharded: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def merge_lora(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The base model's state dict with LoRA folded in: `W + scaling * B @ A` per adapted layer
    (peft's merge for plain LoRA) and peft's key prefixes removed. A model without LoRA passes through."""
    scaling = {name: m.scaling["default"] for name, m in model.named_modules() if isinstance(getattr(m, "scaling", None), dict)}
    if not scaling:
        return state
    prefix = "base_model.model."
    merged: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        name = key
        if name.endswith(".base_layer.weight"):
            layer = name[: -len(".base_layer.weight")]
            a, b = state[f"{layer}.lora_A.default.weight"], state[f"{layer}.lora_B.default.weight"]
            acc = torch.promote_types(value.dtype, torch.float32)
            value = (value.to(acc) + scaling[layer] * (b.to(acc) @ a.to(acc))).to(value.dtype)
        name = name.replace(".base_layer.", ".")
        merged[name[len(prefix) :] if name.startswith(prefix) else name] = value
    return merged


def export_pretrained(model: torch.nn.Module, tokenizer: Any, folder: str | Path, *, dtype: torch.dtype | None = None) -> Path | None:
    """Write a plain `save_pretrained` folder of `model` (sharded or not, LoRA merged), atomically;
    floating-point weights in `dtype` when given (the compute dtype, not float32 training masters).

    The export is rebuilt from the underlying Hugging Face model's class and config. Every rank
    calls it (gathering is collective); rank 0 writes and returns the folder."""
    get_base = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else model
    state = full_state_dict(model)
    rank, _ = _world()
    folder = Path(folder)
    if rank == 0:
        weights = merge_lora(model, state)
        if dtype is not None:
            weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
        with torch.device("meta"):
            fresh = type(base)(base.config)
        fresh.load_state_dict(weights, strict=False, assign=True)
        fresh.tie_weights()  # tied output embeddings point at the loaded input embeddings again
        missing = [n for n, p in fresh.named_parameters() if p.is_meta]
        if missing:
            raise RuntimeError(f"export: no weights gathered for {missing[:5]}")
        tmp = folder.with_name(f".tmp-{folder.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        fresh.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        _fsync_tree(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        log.info("exported %s", folder)
    _barrier()
    return folder if rank == 0 else None
