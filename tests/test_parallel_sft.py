"""SFT under sequence parallelism (gloo, 2 ranks) equals the single-process run: loss and weights,
with and without packing."""

import pytest
import torch

from dist_utils import run_ranks
from helpers import exact_float64_norms, flash_set
from longvid.config import ModelConfig, ParallelConfig, VideoConfig
from longvid.model import load_adapter
from longvid.sft.trainer import SFTConfig, SFTTrainer
from longvid.training import OptimConfig


def _train(rank, world, sp, mode, layout, tmp, grad_accum=2, pack_tokens=0):
    from longvid.parallel.mesh import Mesh, init_mesh

    mesh = init_mesh(sp=sp) if world > 1 else Mesh.single()
    samples, frames = flash_set(4, num_frames=12)
    cfg = SFTConfig(
        train=__file__, out_dir=f"{tmp}/run-{world}-{mode}-{pack_tokens}", steps=2, grad_accum=grad_accum, pack_tokens=pack_tokens,
        progress=False, log_every=0,
        video=VideoConfig(num_frames=12), optim=OptimConfig(lr=1e-2, warmup_steps=0),
        parallel=ParallelConfig(sp=sp, mode=mode, layout=layout),
    )
    with exact_float64_norms():
        trainer = SFTTrainer(load_adapter(ModelConfig(seed=3, dtype="float64")), cfg, samples, frames, mesh=mesh)
        history = trainer.train()
    # Plain lists: tensors would travel between processes through shared memory that dies with the rank.
    full = {n: p.detach().full_tensor() if hasattr(p, "full_tensor") else p.detach() for n, p in trainer.adapter.hf.named_parameters()}
    params = {n: torch.cat([p.flatten()[:32], p.sum()[None], p.norm()[None]]).tolist() for n, p in full.items()}
    return [h["loss"] for h in history], params


@pytest.mark.parametrize("mode,layout", [("ulysses", "zigzag"), ("ring", "contiguous")])
def test_sft_with_sp2_equals_one_process(tmp_path, mode, layout):
    ref_losses, ref_params = _train(0, 1, 1, mode, layout, tmp_path)
    results = run_ranks(_train, 2, 2, mode, layout, str(tmp_path), timeout=300)
    for losses, params in results:
        assert losses == pytest.approx(ref_losses, abs=1e-10, rel=1e-10)
        for name, ref in ref_params.items():
            torch.testing.assert_close(torch.tensor(params[name]), torch.tensor(ref), atol=1e-9, rtol=1e-9, msg=name)


def test_data_parallel_two_ranks_equals_one_process_with_twice_the_accumulation(tmp_path):
    ref_losses, ref_params = _train(0, 1, 1, "hybrid", "zigzag", tmp_path, 4)
    results = run_ranks(_train, 2, 1, "hybrid", "zigzag", str(tmp_path), 2, timeout=300)
    for losses, params in results:
        assert losses == pytest.approx(ref_losses, abs=1e-10, rel=1e-10)
        for name, ref in ref_params.items():
            torch.testing.assert_close(torch.tensor(params[name]), torch.tensor(ref), atol=1e-9, rtol=1e-9, msg=name)


def test_packed_sft_with_sp2_equals_one_process_unpacked(tmp_path):
    """Two samples packed into one sequence (document mask), sharded over 2 SP ranks (zigzag)."""
    ref_losses, ref_params = _train(0, 1, 1, "hybrid", "zigzag", tmp_path)
    for losses, params in run_ranks(_train, 2, 2, "hybrid", "zigzag", str(tmp_path), 2, 4096, timeout=300):
        assert losses == pytest.approx(ref_losses, abs=1e-10, rel=1e-10)
        for name, ref in ref_params.items():
            torch.testing.assert_close(torch.tensor(params[name]), torch.tensor(ref), atol=1e-9, rtol=1e-9, msg=name)
