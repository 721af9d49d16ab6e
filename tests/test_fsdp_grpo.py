"""GRPO under FSDP (gloo, dp=2), through the public `GRPOTrainer(...).train()` API: the same run
with replicated parameters (all-reduced gradients) gives the same losses and weights (float64),
and a resume in new processes equals the uninterrupted run (each rank's sampling stream restored)."""

import torch

from dist_utils import run_ranks
from helpers import exact_float64_norms, flash_set
from longvid.config import ModelConfig, ParallelConfig, VideoConfig
from longvid.model import load_adapter
from longvid.rl.trainer import GRPOConfig, GRPOTrainer
from longvid.training import OptimConfig


def _train(rank, world, tmp, name, fsdp, steps=2, stop_after=None, resume=False, beta=0.04):
    from longvid.parallel.mesh import init_mesh

    mesh = init_mesh()
    samples, frames = flash_set(4, num_frames=8)
    cfg = GRPOConfig(
        train=__file__, out_dir=f"{tmp}/{name}", steps=steps, batch_size=1, group_size=3, max_new_tokens=6,
        progress=False, log_every=0, save_every=1, beta=beta, video=VideoConfig(num_frames=8),
        optim=OptimConfig(lr=1e-2, warmup_steps=0), parallel=ParallelConfig(fsdp=fsdp),
    )
    with exact_float64_norms():
        trainer = GRPOTrainer(load_adapter(ModelConfig(seed=2, dtype="float64")), cfg, samples, frames, mesh=mesh)
        if stop_after is not None:
            trainer.config.steps = stop_after
        history = trainer.train(resume=resume)
    weights = {}
    for n, p in trainer.adapter.hf.named_parameters():
        full = p.detach().full_tensor() if hasattr(p, "full_tensor") else p.detach()
        weights[n] = torch.cat([full.flatten()[:16], full.sum()[None], full.norm()[None]]).tolist()
    keys = ("loss", "reward", "kl", "response_length")
    return [{k: h[k] for k in keys} for h in history], weights, trainer.sp.sharded


def _same(a, b):
    assert len(a[0]) == len(b[0])
    for x, y in zip(a[0], b[0]):
        for k in x:
            assert abs(x[k] - y[k]) <= 1e-9 * max(1.0, abs(y[k])), (k, x[k], y[k])
    for name in b[1]:
        torch.testing.assert_close(torch.tensor(a[1][name]), torch.tensor(b[1][name]), atol=1e-9, rtol=1e-9, msg=name)


def test_grpo_fsdp_dp2_equals_replicated_dp2(tmp_path):
    sharded = run_ranks(_train, 2, str(tmp_path), "fsdp", True, timeout=500)
    replicated = run_ranks(_train, 2, str(tmp_path), "plain", False, timeout=500)
    for a, b in zip(sharded, replicated):
        assert a[2] and not b[2]
        _same(a, b)


def test_grpo_fsdp_dp2_resume_equals_uninterrupted(tmp_path):
    full = run_ranks(_train, 2, str(tmp_path), "full", True, 3, timeout=500)
    run_ranks(_train, 2, str(tmp_path), "cut", True, 3, 2, timeout=500)
    resumed = run_ranks(_train, 2, str(tmp_path), "cut", True, 3, None, True, timeout=500)
    for a, b in zip(resumed, full):
        _same(a, b)
