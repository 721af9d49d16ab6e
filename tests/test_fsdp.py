"""FSDP2 (gloo): SFT under dp=2 and dp=2 x sp=2 equals one process (float64, losses and weights);
a distributed checkpoint resumed by fresh processes equals the uninterrupted run; the exported
folder reloads to the same logits; SP with empty frame shares and a trainable tower finishes."""

from pathlib import Path

import pytest
import torch

from dist_utils import run_ranks
from helpers import exact_float64_norms, flash_sample, flash_set
from longvid.config import ModelConfig, ParallelConfig, VideoConfig
from longvid.model import load_adapter
from longvid.sft.trainer import SFTConfig, SFTTrainer
from longvid.training import LoRAConfig, OptimConfig

FIXED_IDS = torch.arange(5, 45)


def _full(p):
    return p.full_tensor() if hasattr(p, "full_tensor") else p


def _snapshot(hf):
    """Per parameter: the first values, sum and norm of the whole tensor (gathered when sharded)."""
    out = {}
    for name, p in hf.named_parameters():
        full = _full(p.detach())
        out[name] = torch.cat([full.flatten()[:32], full.sum()[None], full.norm()[None]]).tolist()
    return out


def _config(tmp, name, *, sp=1, fsdp=True, grad_accum=2, steps=2, save_every=0, num_frames=12, activation_checkpointing=False, **kw):
    return SFTConfig(
        train=__file__, out_dir=f"{tmp}/{name}", steps=steps, grad_accum=grad_accum, progress=False, log_every=0,
        save_every=save_every, video=VideoConfig(num_frames=num_frames), optim=OptimConfig(lr=1e-2, warmup_steps=0),
        parallel=ParallelConfig(sp=sp, mode="ring" if sp == 3 else "hybrid", fsdp=fsdp,
                                activation_checkpointing=activation_checkpointing), **kw,
    )


def _train(rank, world, tmp, name, options, stop_after=None, resume=False, export=None, samples_n=4):
    """Train on `world` ranks; `stop_after` steps then a crash-like stop (the checkpoint is left),
    `resume` continues from it in new processes. Returns losses, weights and whether sharded."""
    from longvid.parallel.mesh import Mesh, init_mesh

    options = dict(options)
    num_frames = options.get("num_frames", 12)
    mesh = init_mesh(sp=options.get("sp", 1)) if world > 1 else Mesh.single("cpu")
    if options.pop("one_long", False):  # sample 0 has 48 frames (171 tokens), the others 4 (83 tokens)
        pairs = [flash_sample(i, num_frames=48 if i == 0 else 4) for i in range(samples_n)]
        by_id = {s.id: f for s, f in pairs}
        samples, frames = [s for s, _ in pairs], lambda s: by_id[s.id]
    else:
        samples, frames = flash_set(samples_n, num_frames=num_frames)
    cfg = _config(tmp, name, **options)
    with exact_float64_norms():
        trainer = SFTTrainer(load_adapter(ModelConfig(seed=3, dtype="float64")), cfg, samples, frames, mesh=mesh)
        if stop_after is not None:
            trainer.config.steps = stop_after  # ends (and checkpoints) early, like a killed job
        history = trainer.train(resume=resume)
        logits = None
        if export is not None:
            trainer.export(f"{tmp}/{export}")
            trainer.adapter.model.eval()
            with torch.no_grad():
                hidden, _ = trainer.adapter.hidden_states(
                    trainer.adapter.embed_tokens(FIXED_IDS)[None], torch.arange(len(FIXED_IDS)).expand(3, 1, -1)
                )
                logits = trainer.adapter.logits(hidden).tolist()
    sharded = trainer.sp.sharded
    return [h["loss"] for h in history], _snapshot(trainer.adapter.hf), sharded, logits


def _assert_same(result, ref_losses, ref_params):
    losses, params = result[0], result[1]
    assert losses == pytest.approx(ref_losses, abs=1e-10, rel=1e-10)
    for name, ref in ref_params.items():
        torch.testing.assert_close(torch.tensor(params[name]), torch.tensor(ref), atol=1e-9, rtol=1e-9, msg=name)


def test_fsdp_dp2_sft_equals_one_process(tmp_path):
    ref_losses, ref_params, sharded, _ = _train(0, 1, str(tmp_path), "one", {"grad_accum": 4})
    assert not sharded  # a mesh of one is the plain path
    results = run_ranks(_train, 2, str(tmp_path), "dp2", {"grad_accum": 2}, timeout=400)
    for result in results:
        assert result[2], "FSDP was not applied on a mesh of two"
        _assert_same(result, ref_losses, ref_params)


def test_fsdp_dp2_sp2_sft_equals_one_process(tmp_path):
    ref_losses, ref_params, _, _ = _train(0, 1, str(tmp_path), "one", {"grad_accum": 4})
    for result in run_ranks(_train, 4, str(tmp_path), "dp2sp2", {"sp": 2, "grad_accum": 2}, timeout=600):
        assert result[2]
        _assert_same(result, ref_losses, ref_params)


def test_dp2_packed_sft_with_uneven_pack_counts_equals_one_process(tmp_path):
    """`pack_tokens` 200 on two data-parallel ranks (gradients all-reduced once per step): whichever
    rank draws the long sample runs two packs (171 | 83), the other one (83 + 83); losses and weights
    equal one process that packs nothing."""
    ref_losses, ref_params, _, _ = _train(0, 1, str(tmp_path), "one", {"grad_accum": 4, "one_long": True})
    options = {"grad_accum": 2, "one_long": True, "pack_tokens": 200, "fsdp": False}
    for result in run_ranks(_train, 2, str(tmp_path), "dp2pack", options, timeout=400):
        assert not result[2]
        _assert_same(result, ref_losses, ref_params)


def test_packing_under_fsdp_on_two_data_parallel_ranks_is_refused(tmp_path):
    with pytest.raises(AssertionError, match="pack_tokens needs parallel.fsdp=false"):
        run_ranks(_train, 2, str(tmp_path), "fsdppack", {"grad_accum": 2, "pack_tokens": 200}, timeout=400)


@pytest.mark.parametrize("sp,dp", [(1, 2), (2, 1)])
def test_distributed_checkpoint_resume_equals_uninterrupted(tmp_path, sp, dp):
    options = {"sp": sp, "grad_accum": 2, "steps": 3, "save_every": 1}
    world = sp * dp
    full = run_ranks(_train, world, str(tmp_path), "full", options, timeout=400)
    run_ranks(_train, world, str(tmp_path), "cut", options, 2, timeout=400)  # stops after step 2
    assert (tmp_path / "cut" / "checkpoints" / "step-000002" / "dcp").is_dir()
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints" / "step-000002").glob("rank-*.pt")) == [
        f"rank-{r:05d}.pt" for r in range(world)
    ]
    resumed = run_ranks(_train, world, str(tmp_path), "cut", options, None, True, timeout=400)
    for a, b in zip(full, resumed):
        _assert_same(b, a[0], a[1])


def test_exported_folder_reloads_to_identical_logits(tmp_path):
    results = run_ranks(_train, 2, str(tmp_path), "dp2", {"grad_accum": 1, "steps": 1}, None, False, "export", timeout=400)
    with exact_float64_norms():
        reloaded = load_adapter(ModelConfig(path=str(tmp_path / "export"), dtype="float64", device="cpu"))
        with torch.no_grad():
            hidden, _ = reloaded.hidden_states(reloaded.embed_tokens(FIXED_IDS)[None], torch.arange(len(FIXED_IDS)).expand(3, 1, -1))
            logits = reloaded.logits(hidden)
    for result in results:
        torch.testing.assert_close(logits, torch.tensor(result[3], dtype=torch.float64), atol=0, rtol=0)
    _assert_same((results[0][0], _snapshot(reloaded.hf)), results[0][0], results[0][1])


def test_lora_export_merges_the_adapter(tmp_path):
    """One process with LoRA: the exported (merged) plain model gives the peft model's logits."""
    _, _, _, logits = _train(
        0, 1, str(tmp_path), "lora", {"grad_accum": 1, "steps": 1, "lora": LoRAConfig(rank=4, alpha=8.0)},
        None, False, "export",
    )
    with exact_float64_norms():
        reloaded = load_adapter(ModelConfig(path=str(tmp_path / "export"), dtype="float64", device="cpu"))
        assert not any("lora" in n for n, _ in reloaded.model.named_parameters())
        with torch.no_grad():
            hidden, _ = reloaded.hidden_states(reloaded.embed_tokens(FIXED_IDS)[None], torch.arange(len(FIXED_IDS)).expand(3, 1, -1))
    torch.testing.assert_close(reloaded.logits(hidden).detach(), torch.tensor(logits, dtype=torch.float64), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("sp,num_frames,fsdp", [(3, 2, True), (4, 4, True), (3, 2, False)])
def test_sp_with_empty_frame_shares_and_a_trainable_tower(tmp_path, sp, num_frames, fsdp):
    """Fewer temporal patches than SP ranks (2 frames = 1 patch over 3 ranks, 4 frames = 2 over 4):
    ranks with no frames still run the tower; the run finishes and equals one process."""
    options = {"sp": sp, "grad_accum": 2, "num_frames": num_frames, "fsdp": fsdp}
    ref_losses, ref_params, _, _ = _train(0, 1, str(tmp_path), "one", {**options, "sp": 1}, samples_n=2)
    results = run_ranks(_train, sp, str(tmp_path), f"sp{sp}", options, None, False, None, 2, timeout=500)
    for result in results:
        assert result[2] == fsdp
        _assert_same(result, ref_losses, ref_params)


def test_activation_checkpointing_changes_no_number(tmp_path):
    """One process: recomputing each block in backward gives the same losses and weights."""
    plain = _train(0, 1, str(tmp_path), "plain", {"grad_accum": 2})
    checkpointed = _train(0, 1, str(tmp_path), "ac", {"grad_accum": 2, "activation_checkpointing": True})
    _assert_same(checkpointed, plain[0], plain[1])


def test_activation_checkpointing_recomputes_each_block_in_backward():
    from longvid.parallel.parallelize import apply_activation_checkpointing

    adapter = load_adapter(ModelConfig(seed=1, dtype="float64", device="cpu"))
    layer = adapter.layers()["llm"][0]
    calls = []
    layer.mlp.register_forward_pre_hook(lambda *a: calls.append(1))  # recomputation may stop early, inside it

    def step():
        hidden, _ = adapter.hidden_states(adapter.embed_tokens(FIXED_IDS)[None], torch.arange(len(FIXED_IDS)).expand(3, 1, -1))
        hidden.sum().backward()
        return layer.mlp.down_proj.weight.grad.clone()

    plain = step()
    adapter.model.zero_grad()
    apply_activation_checkpointing(adapter.layers()["llm"])
    checkpointed = step()
    assert len(calls) == 3  # once without, twice (forward + recomputation) with checkpointing
    torch.testing.assert_close(checkpointed, plain, atol=0, rtol=0)


def test_lora_under_fsdp_equals_one_process_and_exports(tmp_path):
    """LoRA with FSDP: the frozen base stays replicated, the adapters are sharded; losses, weights
    and the merged export equal one process's."""
    options = {"grad_accum": 1, "steps": 2, "lora": LoRAConfig(rank=4, alpha=8.0), "freeze_vision": True}
    ref = _train(0, 1, str(tmp_path), "one", {**options, "grad_accum": 2}, None, False, "export-one")
    results = run_ranks(_train, 2, str(tmp_path), "dp2", options, None, False, "export-dp2", timeout=500)
    for result in results:
        assert result[2]
        _assert_same(result, ref[0], ref[1])
        torch.testing.assert_close(torch.tensor(result[3]), torch.tensor(ref[3]), atol=1e-9, rtol=1e-9)
    with exact_float64_norms():
        reloaded = load_adapter(ModelConfig(path=str(tmp_path / "export-dp2"), dtype="float64", device="cpu"))
        with torch.no_grad():
            hidden, _ = reloaded.hidden_states(reloaded.embed_tokens(FIXED_IDS)[None], torch.arange(len(FIXED_IDS)).expand(3, 1, -1))
    torch.testing.assert_close(reloaded.logits(hidden), torch.tensor(results[0][3], dtype=torch.float64), atol=1e-10, rtol=1e-10)


def _bf16_step(rank, world, tmp, lr):
    """One full fine-tuning SFT step of a bfloat16 model under FSDP dp=2: the dtypes the optimizer
    steps and the forward computes in, and how far the (gathered) weights moved."""
    from longvid.parallel.mesh import init_mesh

    mesh = init_mesh()
    samples, frames = flash_set(4, num_frames=4)
    cfg = SFTConfig(
        train=__file__, out_dir=f"{tmp}/bf16", steps=1, grad_accum=2, progress=False, log_every=0,
        video=VideoConfig(num_frames=4), optim=OptimConfig(lr=lr, warmup_steps=0, max_grad_norm=1e9),
    )
    trainer = SFTTrainer(load_adapter(ModelConfig(seed=3, dtype="bfloat16")), cfg, samples, frames, mesh=mesh)
    head = trainer.adapter.hf.lm_head
    seen = []
    # Registered after FSDP's own hooks: the pre-hook sees the gathered (compute) weight.
    head.register_forward_pre_hook(lambda module, args: seen.append(module.weight.dtype))
    head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    before = {name: _full(p.detach()).clone() for name, p in trainer.adapter.hf.named_parameters() if p.requires_grad}
    masters = {p.dtype for group in trainer.optimizer.param_groups for p in group["params"]}
    trainer.train()
    moved = {name: float((_full(p.detach()) - before[name]).abs().max()) for name, p in trainer.adapter.hf.named_parameters() if name in before}
    exported = set()
    if trainer.export(f"{tmp}/final") is not None:
        from safetensors import safe_open

        for file in Path(f"{tmp}/final").glob("*.safetensors"):
            with safe_open(str(file), "pt") as f:
                exported |= {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    return sorted(map(str, masters)), sorted(set(map(str, seen))), moved, sorted(exported)


def test_fsdp_bf16_trains_float32_masters_in_bf16_compute(tmp_path):
    """A bfloat16 model under FSDP computes in bfloat16 while the optimizer steps float32 masters:
    an Adam step at lr 1e-6 moves every weight by ~1e-6, which a bf16 master would round away;
    the export is bfloat16 again."""
    results = run_ranks(_bf16_step, 2, str(tmp_path), 1e-6, timeout=400)
    assert results[0][3] == ["BF16"]  # the export is in the compute dtype, not the float32 masters
    for masters, seen, moved, _ in results:
        assert masters == ["torch.float32"]
        assert seen == ["torch.bfloat16"]
        assert len(moved) > 10
        for name, delta in moved.items():
            assert 1e-7 < delta < 1e-5, (name, delta)
    assert results[0][2] == results[1][2]


def test_one_process_bf16_full_fine_tune_is_warned_about(tmp_path, caplog):
    samples, frames = flash_set(2, num_frames=4)
    cfg = SFTConfig(train=__file__, out_dir=f"{tmp_path}/one", steps=1, progress=False, log_every=0, video=VideoConfig(num_frames=4))
    with caplog.at_level("WARNING", logger="longvid.training"):
        SFTTrainer(load_adapter(ModelConfig(seed=3, dtype="bfloat16")), cfg, samples, frames)
    assert "stepped in torch.bfloat16 by one process" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="longvid.training"):  # LoRA adapters are float32 (peft): nothing to warn about
        SFTTrainer(load_adapter(ModelConfig(seed=3, dtype="bfloat16")), SFTConfig(**{**cfg.__dict__, "lora": LoRAConfig(rank=4), "freeze_projector": True, "freeze_vision": True}),
                   samples, frames)
    assert "stepped in" not in caplog.text
