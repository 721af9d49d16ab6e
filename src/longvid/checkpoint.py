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
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


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


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    tokenizer: Any,
    state: dict[str, Any],
    keep: int = 2,
    *,
    rank_state: dict[str, Any] | None = None,
    sharded: dict[str, Any] | None = None,
) -> Path:
    """Write `out_dir/step-{step}` atomically and point `out_dir/latest` at it; every rank calls it.

    `state` is written by rank 0, `rank_state` (plus the RNG states) by every rank. `sharded`, a
    state dict of DTensors (model and optimizer under FSDP), goes to `dcp/` collectively;
    without it rank 0 saves `model` with `save_pretrained`.
    """
    rank, _ = _world()
    out_dir = Path(out_dir)
    final = out_dir / f"step-{step:06d}"
    tmp = out_dir / f".tmp-step-{step:06d}"
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
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / ("model" if sharded is None else "tokenizer")))
        torch.save({**state, "step": step}, tmp / "state.pt")
    torch.save({**(rank_state or {}), "rng": rng_state()}, rank_file(tmp, rank))
    _barrier()
    if rank == 0:
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = out_dir / ".latest.tmp"
        pointer.write_text(final.name)
        os.replace(pointer, out_dir / "latest")
        _prune(out_dir, keep)
        log.info("saved checkpoint %s", final)
    _barrier()
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


def export_pretrained(model: torch.nn.Module, tokenizer: Any, folder: str | Path) -> Path | None:
    """Write a plain `save_pretrained` folder of `model` (sharded or not, LoRA merged), atomically.

    The export is rebuilt from the underlying Hugging Face model's class and config. Every rank
    calls it (gathering is collective); rank 0 writes and returns the folder."""
    get_base = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else model
    state = full_state_dict(model)
    rank, _ = _world()
    folder = Path(folder)
    if rank == 0:
        weights = merge_lora(model, state)
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
