"""GRPO's packed policy pass under sequence parallelism (gloo) equals one process: log-probs and grads."""

import numpy as np
import pytest
import torch

from dist_utils import run_ranks
from helpers import exact_float64_norms
from longvid.config import ModelConfig
from longvid.model import load_adapter
from longvid.parallel.apply import SequenceParallel
from longvid.rl.packing import pack, packed_logprobs


def _packed_pass(rank, world, mode, layout):
    from longvid.parallel.mesh import Mesh, init_mesh

    mesh = init_mesh(sp=world) if world > 1 else Mesh.single()
    adapter = load_adapter(ModelConfig(seed=4, dtype="float64"))
    sp = SequenceParallel(adapter, mesh, mode=mode, layout=layout)
    frames = np.random.default_rng(1).integers(0, 256, size=(10, 56, 56, 3), dtype=np.uint8)
    g = torch.Generator().manual_seed(0)
    responses = [torch.randint(10, 1000, (n,), generator=g) for n in (5, 1, 7, 3)]
    with exact_float64_norms():
        visual = sp.encode(adapter.preprocess(frames, np.arange(10) * 0.5))  # frame-sharded, with gradients
        prompt = adapter.build_prompt("Which colour comes first?", visual)
        embeds, positions = adapter.prefix_inputs(prompt, visual)
        logp = packed_logprobs(adapter, pack(adapter, embeds, positions, responses), sp=sp)
        weights = torch.linspace(-1, 1, logp.numel(), dtype=logp.dtype).view_as(logp)
        (logp * weights).sum().backward()
    sp.all_reduce_grads(adapter.hf.parameters())
    grads = {n: p.grad.flatten()[:64].tolist() + [float(p.grad.sum()), float(p.grad.norm())]
             for n, p in adapter.hf.named_parameters() if p.grad is not None}
    return logp.detach().tolist(), grads


@pytest.mark.parametrize("world,mode,layout", [(2, "ulysses", "zigzag"), (2, "ring", "zigzag"), (4, "hybrid", "zigzag")])
def test_packed_policy_pass_is_exact_under_sp(world, mode, layout):
    ref_logp, ref_grads = _packed_pass(0, 1, mode, layout)
    for logp, grads in run_ranks(_packed_pass, world, mode, layout, timeout=300):
        torch.testing.assert_close(torch.tensor(logp), torch.tensor(ref_logp), atol=1e-10, rtol=0)
        assert grads.keys() == ref_grads.keys()
        for name in ref_grads:
            torch.testing.assert_close(torch.tensor(grads[name]), torch.tensor(ref_grads[name]), atol=1e-9, rtol=1e-9, msg=name)


def _filtered_grpo(rank, world, out_dir, num_samples, batch_size, compressed=False, pack_tokens=0):
    """GRPO on flash-0 (always filtered) and flash-1 (kept), over a compressed prefix (summary
    tokens at ratios 2 and 4) when `compressed`; returns the history and the LLM weights."""
    from helpers import flash_set
    from longvid.config import VideoConfig
    from longvid.model.compress import CompressConfig
    from longvid.parallel.mesh import Mesh, init_mesh
    from longvid.rl.trainer import GRPOConfig, GRPOTrainer
    from longvid.training import OptimConfig

    mesh = init_mesh() if world > 1 else Mesh.single()
    samples, frames = flash_set(num_samples, num_frames=8)
    adapter = load_adapter(ModelConfig(seed=3, dtype="float64"))
    cfg = GRPOConfig(train=__file__, out_dir=out_dir, steps=2, batch_size=batch_size, group_size=4, max_new_tokens=6,
                     filter_groups=True, rewards={"reward_fns:flat_for_flash_0": 1.0}, progress=False, log_every=0,
                     video=VideoConfig(num_frames=8), optim=OptimConfig(lr=1e-2, warmup_steps=0),
                     compress=CompressConfig(ratios=(2, 4), window=8) if compressed else None, pack_tokens=pack_tokens)
    with exact_float64_norms():
        history = GRPOTrainer(adapter, cfg, samples, frames, mesh=mesh).train()
    # numpy, not tensors: results travel back pickled by value
    # (FSDP-sharded parameters are gathered whole first; every rank gathers in the same order.)
    weights = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().numpy().copy()
               for n, p in adapter.hf.named_parameters() if "language_model" in n or "lm_head" in n}
    return history, weights


@pytest.mark.parametrize("num_samples,per_rank,kept,compressed,pack_tokens",
                         [(2, 1, [0, 1], False, 0), (4, 2, [1, 2], False, 0), (2, 1, [0, 1], True, 0),
                          (2, 1, [0, 1], False, 10_000), (4, 2, [1, 2], False, 10_000)],
                         ids=["one-rank-keeps-nothing", "one-rank-keeps-less", "compressed-one-rank-keeps-nothing",
                              "packed-one-rank-keeps-nothing", "packed-one-rank-keeps-less"])
def test_dp_grpo_where_one_rank_keeps_no_group_equals_one_process(tmp_path, num_samples, per_rank, kept, compressed, pack_tokens):
    """Crash 2: with filter_groups a rank whose groups are all dropped still joins every collective,
    and a rank that kept fewer groups than its peer runs as many passes. DP=2 equals one process
    with the whole batch: same rollouts (the random stream is per place in the global batch), same
    kept groups, same update (float64), also over a compressed prefix (summary tokens) under FSDP.
    flash-0's group is always dropped, the others kept. With `pack_tokens` each rank packs its kept
    groups into one forward (the one-process run packs all three), and the rank with none runs a
    zero-weight pass beside its peer's."""
    single_history, single = _filtered_grpo(0, 1, str(tmp_path / "single"), num_samples, 2 * per_rank, compressed, pack_tokens)
    ranks = run_ranks(_filtered_grpo, 2, str(tmp_path / "dp"), num_samples, per_rank, compressed, pack_tokens, timeout=600)
    for step in range(2):
        got = sorted(history[step]["groups_kept"] for history, _ in ranks)
        assert got == kept, f"step {step}: kept groups per rank {got}, expected {kept}"
        assert single_history[step]["groups_kept"] == sum(kept)
        assert all(h[step]["groups_kept_all_ranks"] == sum(kept) for h, _ in ranks)
        rewards = [h[step]["reward"] for h, _ in ranks]
        assert single_history[step]["reward"] == pytest.approx(sum(rewards) / 2, abs=1e-6)  # float32 rewards
        assert single_history[step]["grad_norm"] > 0
        if pack_tokens:
            assert single_history[step]["passes"] == 1 and all(h[step]["passes"] == 1 for h, _ in ranks)
    initial = load_adapter(ModelConfig(seed=3, dtype="float64")).hf.state_dict()
    assert any(not torch.equal(torch.from_numpy(single[n]), initial[n]) for n in single)  # the update is real
    for _, weights in ranks:
        assert weights.keys() == single.keys()
        # The updates are ~1.5e-2; Adam amplifies float64 roundoff in near-zero gradients to ~1e-12
        # in a few weights (1 of 8192 seen at 1.2e-12), so 1e-10 is roundoff, far below any real difference.
        for name, value in single.items():
            torch.testing.assert_close(torch.from_numpy(weights[name]), torch.from_numpy(value), atol=1e-10, rtol=0, msg=name)
