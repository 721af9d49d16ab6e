"""Atomic, exactly-resumable training checkpoints.

A checkpoint is a folder `step-000123/` holding the model in `save_pretrained` layout (safetensors;
only the adapter weights for LoRA), and `state.pt` with the optimizer, scheduler, RNG states, step
and data position, loadable with `weights_only=True`. It is written to a temporary folder and
renamed into place, and `latest` is replaced atomically, so a crash never leaves a half checkpoint
that resume would pick up.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))


def save_checkpoint(
    out_dir: str | Path, step: int, model: torch.nn.Module, tokenizer: Any, state: dict[str, Any], keep: int = 2
) -> Path:
    """Write `out_dir/step-{step}` atomically and point `out_dir/latest` at it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"step-{step:06d}"
    tmp = out_dir / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp / "model"), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp / "model"))
    torch.save({**state, "step": step, "rng": rng_state()}, tmp / "state.pt")
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = out_dir / ".latest.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, out_dir / "latest")
    _prune(out_dir, keep)
    log.info("saved checkpoint %s", final)
    return final


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    pointer = Path(out_dir) / "latest"
    if not pointer.is_file():
        return None
    path = Path(out_dir) / pointer.read_text().strip()
    if not (path / "state.pt").is_file():
        raise FileNotFoundError(f"{pointer} points at {path}, which is not a complete checkpoint")
    return path


def load_state(path: str | Path) -> dict[str, Any]:
    return torch.load(Path(path) / "state.pt", weights_only=True, map_location="cpu")


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())


def _prune(out_dir: Path, keep: int) -> None:
    steps = sorted(p for p in out_dir.glob("step-*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
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
