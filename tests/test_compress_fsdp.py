"""Visual summary tokens under FSDP2 (gloo, float64): the model sharded, the summary parameters
replicated with their own optimizer. Compressed SFT on dp=2 and dp=2 x sp=2 equals one process (losses, model
weights, summary parameters), with gradient clipping active over the sharded and replicated
parameters together; compressed GRPO on dp=2 equals one process (full fine-tune with a sharded
reference copy, and LoRA with reference=base); a distributed checkpoint resumed
by fresh processes equals the uninterrupted run; `clip_grad_norm` over parameter sets equals
`clip_grad_norm_` over their union; a bf16 model keeps float32 summary projections."""

import pytest
import torch

from dist_utils import run_ranks
from helpers import exact_float64_norms, flash_set
from longvid.config import ModelConfig, ParallelConfig, VideoConfig
from longvid.errors import ConfigError
from longvid.model import load_adapter
from longvid.model.compress import CompressConfig, SummaryTokens
from longvid.rl.trainer import GRPOConfig, GRPOTrainer
from longvid.sft.trainer import SFTConfig, SFTTrainer
from longvid.training import LoRAConfig, OptimConfig

COMPRESS = CompressConfig(ratios=(2, 4), window=8)  # 8 frames of 56 px: 16 visual tokens, two windows
CLIP = 0.05  # far below the gradient norms of these runs: every step clips


def _whole(p):
    return p.full_tensor() if hasattr(p, "full_tensor") else p


def _weights(trainer) -> dict[str, list[float]]:
    out = {n: _whole(p.detach()).flatten().tolist() for n, p in trainer.adapter.hf.named_parameters()}
    out.update({"summary." + n: p.detach().flatten().tolist() for n, p in trainer.compression.summary.named_parameters()})
    return out


def _mesh(world, sp=1):
    from longvid.parallel.mesh import Mesh, init_mesh

    return init_mesh(sp=sp) if world > 1 else Mesh.single("cpu")


def _sft(rank, world, out_dir, grad_accum, steps=2, save_every=0, stop_after=None, resume=False, dtype="float64", sp=1):
    samples, frames = flash_set(4, num_frames=8)
    cfg = SFTConfig(
        train=__file__, out_dir=out_dir, steps=steps, grad_accum=grad_accum, progress=False, log_every=0,
        save_every=save_every, video=VideoConfig(num_frames=8), compress=COMPRESS,
        optim=OptimConfig(lr=1e-2, warmup_steps=1, max_grad_norm=CLIP), parallel=ParallelConfig(sp=sp, fsdp=True),
    )
    with exact_float64_norms():
        trainer = SFTTrainer(load_adapter(ModelConfig(seed=3, dtype=dtype)), cfg, samples, frames, mesh=_mesh(world, sp))
        if stop_after is not None:
            trainer.config.steps = stop_after  # ends (and checkpoints) early, like a killed job
        history = trainer.train(resume=resume)
    if dtype != "float64":
        return history, {n: str(p.dtype) for n, p in trainer.compression.summary.named_parameters()}, trainer.sp.sharded
    return history, _weights(trainer), trainer.sp.sharded


def _grpo(rank, world, out_dir, batch_size, lora=False):
    samples, frames = flash_set(4, num_frames=8)
    cfg = GRPOConfig(
        train=__file__, out_dir=out_dir, steps=2, batch_size=batch_size, group_size=3, max_new_tokens=6,
        progress=False, log_every=0, video=VideoConfig(num_frames=8), rewards={"reward_fns:shorter_is_better": 1.0},
        beta=0.04, compress=COMPRESS, optim=OptimConfig(lr=1e-2, warmup_steps=0, max_grad_norm=CLIP),
        parallel=ParallelConfig(fsdp=True),
        **({"lora": LoRAConfig(rank=4, alpha=8.0), "reference": "base"} if lora else {}),
    )
    with exact_float64_norms():
        trainer = GRPOTrainer(load_adapter(ModelConfig(seed=7, dtype="float64")), cfg, samples, frames, mesh=_mesh(world))
        history = trainer.train()
    return history, _weights(trainer), trainer.sp.sharded


def _assert_same_weights(got, ref):
    assert got.keys() == ref.keys()
    # Every step clips to CLIP, so many gradients sit near Adam's eps (1e-8), where the update's
    # sensitivity to its gradient reaches lr / eps = 1e6: float64 roundoff then moves a few weights by
    # up to ~4e-9 (2 of 49152 seen). A wrong update moves weights by ~lr = 1e-2.
    for name, value in ref.items():
        torch.testing.assert_close(torch.tensor(got[name]), torch.tensor(value), atol=2e-8, rtol=1e-9, msg=name)


@pytest.mark.parametrize("world,sp", [(2, 1), (4, 2)], ids=["dp2", "dp2xsp2"])
def test_fsdp_compressed_sft_equals_one_process_with_clipping(tmp_path, world, sp):
    """dp=2: each rank takes half of the step's samples; dp=2 x sp=2: SP ranks also share each
    compressed sequence (the summary gradients are summed over SP and DP ranks)."""
    ref_history, ref_weights, sharded = _sft(0, 1, str(tmp_path / "one"), 4)
    assert not sharded
    assert all(h["grad_norm"] > 10 * CLIP for h in ref_history)  # clipping is active at every step
    initial = load_adapter(ModelConfig(seed=3, dtype="float64"))
    fresh = initial.hf.state_dict()
    assert any(torch.tensor(ref_weights[n]).view_as(fresh[n]).ne(fresh[n]).any() for n in fresh)
    summary = SummaryTokens.from_adapter(initial, ratios=COMPRESS.ratios, window=COMPRESS.window)
    assert torch.tensor(ref_weights["summary.embedding"]).ne(summary.embedding.detach()).any()  # they train
    ranks = run_ranks(_sft, world, str(tmp_path / "par"), 2, 2, 0, None, False, "float64", sp, timeout=400)
    for history, weights, sharded in ranks:
        assert sharded, "FSDP was not applied on a mesh of two"
        assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in ref_history], abs=1e-10, rel=1e-10)
        assert [h["grad_norm"] for h in history] == pytest.approx([h["grad_norm"] for h in ref_history], rel=1e-9)
        _assert_same_weights(weights, ref_weights)


def test_fsdp_dp2_compressed_sft_resume_equals_uninterrupted(tmp_path):
    full = run_ranks(_sft, 2, str(tmp_path / "full"), 2, 3, 1, timeout=300)
    run_ranks(_sft, 2, str(tmp_path / "cut"), 2, 3, 1, 2, timeout=300)  # stops after step 2
    assert (tmp_path / "cut" / "checkpoints" / "step-000002" / "dcp").is_dir()
    resumed = run_ranks(_sft, 2, str(tmp_path / "cut"), 2, 3, 1, None, True, timeout=300)
    for (a_history, a_weights, _), (b_history, b_weights, _) in zip(full, resumed):
        assert [h["loss"] for h in b_history] == [h["loss"] for h in a_history]
        _assert_same_weights(b_weights, a_weights)


@pytest.mark.parametrize("lora", [False, True], ids=["full-copy-reference", "lora-base-reference"])
def test_fsdp_dp2_compressed_grpo_equals_one_process(tmp_path, lora):
    """Full fine-tune with a frozen sharded copy as the KL reference, or LoRA with the adapter
    disabled as the reference (the initial summary parameters swapped in for its passes)."""
    ref_history, ref_weights, _ = _grpo(0, 1, str(tmp_path / "one"), 2, lora)
    assert any(h["grad_norm"] > CLIP for h in ref_history)  # clipped
    assert ref_history[-1]["kl"] > 0
    for history, weights, sharded in run_ranks(_grpo, 2, str(tmp_path / "dp2"), 1, lora, timeout=300):
        assert sharded
        for step in range(2):
            assert history[step]["groups_kept_all_ranks"] == ref_history[step]["groups_kept_all_ranks"]
            assert history[step]["grad_norm"] == pytest.approx(ref_history[step]["grad_norm"], rel=1e-9)
        _assert_same_weights(weights, ref_weights)


def test_fsdp_bf16_compressed_sft_keeps_float32_summary_parameters(tmp_path):
    """A bf16 model under FSDP: its trainable masters are float32, and so are the summary
    parameters (embedding and q/k/v); the hooks compute those rows in float32 while the layer runs in bf16."""
    for history, dtypes, sharded in run_ranks(_sft, 2, str(tmp_path / "bf16"), 1, 1, 0, None, False, "bfloat16", timeout=300):
        assert sharded and torch.isfinite(torch.tensor(history[0]["loss"]))
        assert set(dtypes.values()) == {"torch.float32"}, dtypes


def test_clip_grad_norm_over_parameter_sets_equals_clip_grad_norm_over_their_union():
    from longvid.training import clip_grad_norm

    torch.manual_seed(0)
    sets = [[torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64)) for _ in range(2)],
            [torch.nn.Parameter(torch.randn(4, dtype=torch.float64))], []]
    union = [torch.nn.Parameter(p.detach().clone()) for s in sets for p in s]
    for p, q in zip([p for s in sets for p in s], union):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    want = torch.nn.utils.clip_grad_norm_(union, 0.5)
    got = clip_grad_norm(sets, 0.5)
    assert got == pytest.approx(float(want), rel=1e-14) and got > 1  # it clipped
    for p, q in zip([p for s in sets for p in s], union):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-15, rtol=1e-14)


def test_resuming_a_checkpoint_without_summary_optimizer_state_is_refused_by_name(tmp_path):
    """A compressed run resumed from a checkpoint whose state.pt lacks the summary tokens' optimizer
    (an uncompressed run's, or one saved before they had their own) fails naming the file."""
    _sft(0, 1, str(tmp_path / "run"), 1, 1)
    state_file = tmp_path / "run" / "checkpoints" / "step-000001" / "state.pt"
    state = torch.load(state_file, weights_only=True)
    del state["summary_optimizer"]
    torch.save(state, state_file)
    with pytest.raises(ConfigError, match="state.pt holds no optimizer state for the summary tokens"):
        _sft(0, 1, str(tmp_path / "run"), 1, 2, 0, None, True)
