"""FSDP2: per-rank bytes of parameters + gradients + optimizer state at FSDP = 1, 2, 4 (gloo).

Each configuration runs the real SFT trainer (`SFTTrainer`, the same freeze → shard → AdamW
setup as `longvid sft`) for one step on local gloo ranks, keeps the gradients of that step, and
counts the bytes each rank actually holds: the local shard of every parameter (`to_local()` for
FSDP's DTensors), of every gradient, and of every AdamW state tensor. Prints ONE JSON object;
`state_ratio_fsdpN` is the per-rank total at N ranks over the total of one process (ideal 1/N).

    python bench/fsdp.py [--hidden 256 --layers 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the in-memory flash fixtures

PRELOAD = ("torch", "torch.distributed", "longvid.parallel", "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl")


def _bytes(t: torch.Tensor) -> int:
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()


def _measure(rank: int, world: int, out_dir: str, sizes: dict) -> dict:
    from helpers import flash_set
    from longvid.config import ModelConfig, ParallelConfig, VideoConfig
    from longvid.model.qwen2_5_vl import Qwen25VLAdapter
    from longvid.model.tiny import build_tiny_model
    from longvid.parallel.mesh import Mesh, init_mesh
    from longvid.sft.trainer import SFTConfig, SFTTrainer
    from longvid.training import OptimConfig

    mesh = init_mesh() if world > 1 else Mesh.single("cpu")
    model, tokenizer = build_tiny_model(seed=0, **sizes)
    samples, frames = flash_set(world, num_frames=8)
    cfg = SFTConfig(
        train=__file__, out_dir=f"{out_dir}/fsdp{world}", steps=1, grad_accum=1, progress=False, log_every=0,
        video=VideoConfig(num_frames=8), optim=OptimConfig(warmup_steps=0), model=ModelConfig(device="cpu"),
        parallel=ParallelConfig(fsdp=True),
    )
    trainer = SFTTrainer(Qwen25VLAdapter(model, tokenizer), cfg, samples, frames, mesh=mesh)
    trainer.optimizer.zero_grad = lambda set_to_none=True: None  # keep this step's gradients to count them
    trainer.train_step()
    params = list(trainer.adapter.model.parameters())
    state = [v for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return {
        "parameters": sum(_bytes(p) for p in params),
        "gradients": sum(_bytes(p.grad) for p in params if p.grad is not None),
        "optimizer": sum(_bytes(t) for t in state),
        "sharded": trainer.sp.sharded,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--worlds", default="1,2,4")
    args = parser.parse_args()
    from longvid.parallel.launch import spawn_local

    sizes = {"hidden_size": args.hidden, "num_layers": args.layers}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in [int(w) for w in args.worlds.split(",")]:
            if world == 1:
                per_rank = [_measure(0, 1, tmp, sizes)]
            else:
                codes, got = spawn_local(_measure, world, tmp, sizes, timeout=900, preload=PRELOAD)
                if any(codes) or not all(ok for ok, _ in got.values()):
                    raise SystemExit(f"FSDP={world} failed: {codes} {[v for ok, v in got.values() if not ok]}")
                per_rank = [got[r][1] for r in range(world)]
            worst = max(per_rank, key=lambda r: r["parameters"] + r["gradients"] + r["optimizer"])
            rows[world] = {**worst, "total": worst["parameters"] + worst["gradients"] + worst["optimizer"]}
    base = rows[1]["total"] if 1 in rows else None
    result = {
        "what": "per-rank bytes of parameters + gradients + AdamW state after one SFT step (largest rank)",
        "model": {"hidden_size": args.hidden, "num_layers": args.layers, "dtype": "float32"},
        "per_rank": {f"fsdp{w}": r for w, r in rows.items()},
    }
    for world, row in rows.items():
        if base and world > 1:
            result[f"state_ratio_fsdp{world}"] = round(row["total"] / base, 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
