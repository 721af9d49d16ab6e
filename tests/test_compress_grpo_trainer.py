"""The GRPO trainer over a compressed visual context (visual summary tokens): ratio 1 everywhere is
today's trainer exactly; one compressed step's loss and gradients equal G separate compressed
forwards with the GRPO loss; rollout/training drift ~0; DP=2 and SP=2 equal one process; save →
resume is exact (summary parameters and their optimizer state); summary tokens saved beside an SFT
checkpoint are picked up; bad ratios are refused. Under FSDP: tests/test_compress_fsdp.py."""

import random

import pytest
import torch

from dist_utils import run_ranks
from helpers import crash_after, exact_float64_norms, flash_set, separate_compressed_logprobs
from longvid.config import ModelConfig, ParallelConfig, VideoConfig
from longvid.errors import ConfigError
from longvid.model import compress, load_adapter
from longvid.model.compress import PARAMS_FILE, CompressConfig, SummaryTokens
from longvid.rl.grpo import grpo_loss
from longvid.model.tiny import build_tiny_adapter
from longvid.rl.trainer import GRPOConfig, GRPOTrainer, _PhaseTimer
from longvid.sft.trainer import SFTConfig, SFTTrainer
from longvid.training import OptimConfig

WINDOW = 8  # 8 frames of 56 px: 16 visual tokens, two windows
SHORT = {"reward_fns:shorter_is_better": 1.0}  # non-zero advantages from the first step


def _config(tmp_path, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    train = tmp_path / "train.jsonl"
    train.write_text("{}\n")
    base = dict(train=str(train), out_dir=str(tmp_path / "run"), steps=2, batch_size=2, group_size=3,
                max_new_tokens=6, progress=False, log_every=0, video=VideoConfig(num_frames=8), rewards=SHORT,
                optim=OptimConfig(lr=1e-2, warmup_steps=0), compress=CompressConfig(ratios=(2, 4), window=WINDOW))
    base.update(kw)
    return GRPOConfig(**base)


def _llm_weights(trainer):
    return {n: p.detach().clone() for n, p in trainer.adapter.hf.named_parameters() if "language_model" in n or "lm_head" in n}


def test_ratio_one_everywhere_equals_the_uncompressed_trainer_exactly(tmp_path):
    samples, frames = flash_set(2, num_frames=8)
    runs = {}
    for name, comp in (("plain", None), ("ratio1", CompressConfig(ratios=1, window=WINDOW))):
        trainer = GRPOTrainer(load_adapter(ModelConfig(seed=1, dtype="float64")),
                              _config(tmp_path / name, beta=0.04, compress=comp), samples, frames)
        runs[name] = trainer.train(), _llm_weights(trainer)
        assert (trainer.compression is None) == (comp is None)  # the ratio-1 run goes through compression
    (plain, w_plain), (ratio1, w_ratio1) = runs["plain"], runs["ratio1"]
    for a, b in zip(plain, ratio1, strict=True):
        for key in ("loss", "kl", "reward", "grad_norm", "response_length", "drift_max"):
            assert a[key] == b[key], key
    assert plain[-1]["kl"] > 0 and plain[0]["grad_norm"] > 0
    assert w_plain.keys() == w_ratio1.keys()
    assert all(torch.equal(w_plain[n], w_ratio1[n]) for n in w_plain)


def _hand_layout(adapter, summary, trainer, place, encoded):
    """The prompt compressed by hand with the ratios the trainer's stream draws for this place."""
    prompt = encoded.prompt
    embeds, positions = adapter.prefix_inputs(prompt, encoded.visual)
    ratios = trainer.compression.draw_ratios(int(prompt.visual_mask.sum()), random.Random(trainer._prompt_seed(place, 1)))
    return compress.interleave(embeds, positions, prompt.visual_mask, summary.embedding, ratios, WINDOW), ratios


def _grads(*modules):
    return {f"{i}.{n}": p.grad.clone() for i, m in enumerate(modules) for n, p in m.named_parameters() if p.grad is not None}


def test_one_compressed_step_equals_separate_compressed_forwards_with_the_grpo_loss(tmp_path):
    samples, frames = flash_set(2, num_frames=8)
    cfg = _config(tmp_path, beta=0.1, steps=3)
    trainer = GRPOTrainer(load_adapter(ModelConfig(seed=2, dtype="float64")), cfg, samples, frames)
    # The reference: the initial model with fresh (initial) summary tokens, built independently.
    reference = load_adapter(ModelConfig(seed=2, dtype="float64"))
    ref_summary = SummaryTokens.from_adapter(reference, ratios=(2, 4), window=WINDOW).attach(reference)
    with exact_float64_norms():
        trainer.train_step()  # one update first: the policy (and its summary tokens) differ from the reference
        timer = _PhaseTimer()
        batch = trainer._next_batch()
        groups, videos = trainer._rollout(batch, timer)
        scored = trainer._score(groups, timer)
        assert scored.kept == [0, 1] and scored.advantages.abs().sum() > 0
        trainer.adapter.model.train()
        trainer.zero_grad()
        losses = [trainer._forward_backward([i], groups, videos, scored, {}, 1.0, timer)[0][2] for i in scored.kept]
        got = _grads(trainer.adapter.hf, trainer.compression.summary)
        trainer.zero_grad()

        policy, summary = trainer.adapter, trainer.compression.summary
        hand_losses, drawn = [], []
        for (place, _), group, adv in zip(batch, groups, scored.advantages):
            layout, ratios = _hand_layout(policy, summary, trainer, place, group.encoded)
            drawn.append(ratios)
            assert torch.equal(layout.kind, group.layout.kind) and layout.compressed
            logp = separate_compressed_logprobs(policy, layout, group.responses)
            with torch.no_grad():
                ref_layout, _ = _hand_layout(reference, ref_summary, trainer, place, group.encoded)
                ref_logp = separate_compressed_logprobs(reference, ref_layout, group.responses)
            mask = torch.zeros_like(logp, dtype=torch.bool)
            for g, r in enumerate(group.responses):
                mask[g, : len(r)] = True
            loss, _ = grpo_loss(logp, None, ref_logp, adv.to(logp.dtype), mask, epsilon_low=cfg.epsilon_low,
                                epsilon_high=cfg.epsilon_high, beta=cfg.beta, loss_type=cfg.loss_type,
                                max_completion_length=cfg.max_new_tokens, num_items_in_batch=scored.tokens,
                                gradient_accumulation_steps=scored.accumulation)
            loss.backward()
            hand_losses.append(loss.detach())
        want = _grads(policy.hf, summary)
    assert any(r != 1 for ratios in drawn for r in ratios)
    torch.testing.assert_close(torch.stack(losses), torch.stack(hand_losses), atol=1e-10, rtol=0)
    assert got.keys() == want.keys() and any(k.startswith("1.") for k in got)  # summary parameters get gradients
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-10, rtol=1e-9, msg=name)


def test_compressed_rollout_is_evicted_and_its_drift_is_zero(tmp_path, monkeypatch):
    from longvid.rl import rollout

    cached = []
    original = rollout.windowed_prefill

    def recording(adapter, layout, cache=None):
        pre = original(adapter, layout, cache)
        cached.append((pre.cache.get_seq_length(), len(layout), int((layout.kind != compress.RAW).sum())))
        return pre

    monkeypatch.setattr(rollout, "windowed_prefill", recording)
    samples, frames = flash_set(2, num_frames=8)
    trainer = GRPOTrainer(load_adapter(ModelConfig(seed=3)), _config(tmp_path, steps=2, beta=0.04), samples, frames)
    history = trainer.train()
    assert len(cached) == 4  # 2 steps x 2 prompts, each prefilled once for its G responses
    for kept, total, not_raw in cached:
        assert kept == not_raw < total  # the cache holds text and summaries only
    for record in history:
        assert record["drift_max"] < 1e-4  # float32 rollout log-probs vs the packed pass: float noise only
    assert history[-1]["kl"] > 0


def test_lora_policy_with_the_adapter_disabled_runs_the_initial_summary_tokens_as_reference(tmp_path):
    from longvid.training import LoRAConfig

    samples, frames = flash_set(2, num_frames=8)
    cfg = _config(tmp_path, steps=2, beta=0.1, reference="base", lora=LoRAConfig(rank=4))
    trainer = GRPOTrainer(load_adapter(ModelConfig(seed=4)), cfg, samples, frames)
    initial = trainer.compression.summary.embedding.detach().clone()
    history = trainer.train()
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-6) and history[-1]["kl"] > 0
    assert not torch.equal(trainer.compression.summary.embedding.detach(), initial)
    assert torch.equal(trainer.reference_summary.embedding, initial)  # the reference's stay as they started
    assert len(trainer.compression.summary._handles) == 3 * len(trainer.compression.summary.layers)
    assert not trainer.reference_summary._handles  # swapped back out after every reference pass


def test_save_resume_with_compression_equals_the_uninterrupted_run(tmp_path):
    samples, frames = flash_set(3, num_frames=8)
    full_trainer = GRPOTrainer(load_adapter(ModelConfig(seed=5)), _config(tmp_path / "a", steps=3, beta=0.04), samples, frames)
    full = full_trainer.train()

    cfg_b = _config(tmp_path / "b", steps=3, save_every=2, beta=0.04)
    crashing = crash_after(frames, 4)  # two steps of two prompts, then die
    with pytest.raises(KeyboardInterrupt):
        GRPOTrainer(load_adapter(ModelConfig(seed=5)), cfg_b, samples, crashing).train()
    ckpt = tmp_path / "b" / "run" / "checkpoints" / "step-000002" / "model"
    assert (ckpt / PARAMS_FILE).is_file()
    resumed_trainer = GRPOTrainer(load_adapter(ModelConfig(seed=5)), cfg_b, samples, frames)
    resumed = resumed_trainer.train(resume=True)
    for a, b in zip(full, resumed, strict=True):
        assert a["reward"] == b["reward"] and a["loss"] == pytest.approx(b["loss"], abs=1e-7)
        assert a["kl"] == pytest.approx(b["kl"], rel=1e-5, abs=1e-9)
    assert full[-1]["kl"] > 1e-6
    want, got = full_trainer.compression.summary.state_dict(), resumed_trainer.compression.summary.state_dict()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-5, msg=name)
    # The summary parameters' Adam moments were restored too (a fresh optimizer would differ here).
    summary_params = list(full_trainer.compression.summary.parameters())
    resumed_params = list(resumed_trainer.compression.summary.parameters())
    moments = [(full_trainer.summary_optimizer.state[p]["exp_avg_sq"], resumed_trainer.summary_optimizer.state[q]["exp_avg_sq"])
               for p, q in zip(summary_params, resumed_params)]
    assert any(float(a.abs().sum()) > 0 for a, _ in moments)
    for a, b in moments:
        torch.testing.assert_close(b, a, atol=1e-9, rtol=1e-4)
    # Saved beside the final export, so `longvid eval --model final --compress-ratio 4` finds them.
    final = tmp_path / "b" / "run" / "final"
    loaded = SummaryTokens.load(final, load_adapter(ModelConfig(path=str(final))))
    assert loaded.ratios == (2, 4) and torch.equal(loaded.embedding, resumed_trainer.compression.summary.embedding.detach())


def _sft_folder(tmp_path, ratios=(2, 4)):
    """A model folder with summary tokens beside it, as compressed SFT leaves it."""
    adapter = load_adapter(ModelConfig(seed=6))
    summary = SummaryTokens.from_adapter(adapter, ratios=ratios, window=WINDOW)
    with torch.no_grad():
        summary.embedding.add_(1.0)
    folder = tmp_path / "sft"
    adapter.save_pretrained(folder)
    summary.save(folder)
    return folder, summary


def test_grpo_from_a_compressed_checkpoint_picks_its_summary_tokens_up_and_refuses_untrained_ratios(tmp_path):
    folder, saved = _sft_folder(tmp_path)
    samples, frames = flash_set(2, num_frames=8)
    model = ModelConfig(path=str(folder))
    cfg = _config(tmp_path / "ok", model=model, compress=CompressConfig(ratios=4, window=WINDOW))
    trainer = GRPOTrainer(load_adapter(model), cfg, samples, frames)
    assert torch.equal(trainer.compression.summary.embedding.detach(), saved.embedding.detach())
    assert trainer.compression.ratios == (4,) and trainer.compression.summary.ratios == (2, 4)
    record = trainer.train_step()
    assert record["drift_max"] < 1e-4 and not torch.equal(trainer.compression.summary.embedding.detach(), saved.embedding)
    with pytest.raises(ConfigError, match=r"ratio\(s\) \[8\] were not trained.*trained: \[2, 4\]"):
        GRPOTrainer(load_adapter(model), _config(tmp_path / "r8", model=model, compress=CompressConfig(ratios=(4, 8), window=WINDOW)),
                    samples, frames)
    with pytest.raises(ConfigError, match="set compress.window=8"):
        GRPOTrainer(load_adapter(model), _config(tmp_path / "w", model=model, compress=CompressConfig(ratios=4, window=16)),
                    samples, frames)
    for bad in ("0", "-2", "2,0"):
        with pytest.raises(ConfigError, match="positive integer"):
            CompressConfig(ratios=bad)
    with pytest.raises(ConfigError, match="positive integer"):
        CompressConfig(ratios=0)


def _parallel_run(rank, world, out_dir, batch_size, sp):
    """Compressed GRPO (float64) on a mesh: DP = world / sp; returns the history and the weights."""
    from longvid.parallel.mesh import Mesh, init_mesh

    mesh = init_mesh(sp=sp) if world > 1 else Mesh.single()
    samples, frames = flash_set(4, num_frames=8)
    adapter = load_adapter(ModelConfig(seed=7, dtype="float64"))
    cfg = _config_at(out_dir, batch_size, sp)
    with exact_float64_norms():
        trainer = GRPOTrainer(adapter, cfg, samples, frames, mesh=mesh)
        history = trainer.train()
    weights = {n: p.detach().numpy().copy() for n, p in adapter.hf.named_parameters() if "language_model" in n}
    weights.update({"summary." + n: p.detach().numpy().copy() for n, p in trainer.compression.summary.named_parameters()})
    return history, weights


def _config_at(out_dir, batch_size, sp):
    from pathlib import Path

    return _config(Path(out_dir), batch_size=batch_size, beta=0.04, steps=2,
                   parallel=ParallelConfig(sp=sp, fsdp=False))


@pytest.mark.parametrize("world,sp,per_rank", [(2, 1, 1), (2, 2, 2)], ids=["dp2", "sp2"])
def test_parallel_compressed_grpo_equals_one_process(tmp_path, world, sp, per_rank):
    """DP=2: each rank takes half of the global batch; one process with the whole batch does the
    same update. SP=2: both ranks share each prompt's packed compressed pass."""
    dp = world // sp
    single_history, single = _parallel_run(0, 1, str(tmp_path / "single"), per_rank * dp, 1)
    ranks = run_ranks(_parallel_run, world, str(tmp_path / "par"), per_rank, sp, timeout=400)
    initial = load_adapter(ModelConfig(seed=7, dtype="float64")).hf.state_dict()
    assert any(not torch.equal(torch.from_numpy(single[n]), initial[n]) for n in single if not n.startswith("summary."))
    fresh = SummaryTokens.from_adapter(load_adapter(ModelConfig(seed=7, dtype="float64")), ratios=(2, 4), window=WINDOW)
    assert not torch.equal(torch.from_numpy(single["summary.embedding"]), fresh.embedding.detach())  # they train
    for history, weights in ranks:
        for step in range(2):
            if dp == 1:
                assert history[step]["loss"] == pytest.approx(single_history[step]["loss"], abs=1e-12)
            assert history[step]["groups_kept_all_ranks"] == single_history[step]["groups_kept_all_ranks"]
        assert weights.keys() == single.keys()
        for name, value in single.items():
            torch.testing.assert_close(torch.from_numpy(weights[name]), torch.from_numpy(value), atol=1e-11, rtol=0, msg=name)
    if dp > 1:
        for step in range(2):
            mean = sum(h[step]["reward"] for h, _ in ranks) / dp
            assert single_history[step]["reward"] == pytest.approx(mean, abs=1e-6)


def test_cli_grpo_with_compression_then_eval_at_the_trained_ratio(tmp_path, capsys):
    import json

    from longvid.cli import main

    data = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(data), "--num", "2", "--frames", "8", "--specs"]) == 0
    run = tmp_path / "grpo"
    args = ["grpo", "--train", str(data / "data.jsonl"), "--out-dir", str(run), "--steps", "1",
            "--set", "video.num_frames=8", "--set", "progress=false", "--set", "batch_size=1", "--set", "group_size=2",
            "--set", "max_new_tokens=4", "--set", "compress.window=8"]
    assert main([*args, "--set", "compress.ratios=4"]) == 0
    assert "drift" in capsys.readouterr().out
    # --resume reads the stored config (compress included) and continues from the checkpoint.
    assert main([*args[:5], "--steps", "2", "--set", "progress=false", "--resume"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    from longvid.runs import stored_config

    assert stored_config(run)["compress"] == {"ratios": [4], "window": 8}
    final = run / "final"
    assert (run / "checkpoints" / "step-000001" / "model" / PARAMS_FILE).is_file() and (final / PARAMS_FILE).is_file()
    eval_args = ["eval", "--data", str(data / "data.jsonl"), "--model", str(final), "--out", str(tmp_path / "eval"),
                 "--frames", "8", "--max-new-tokens", "4"]
    assert main([*eval_args, "--compress-ratio", "4"]) == 0
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["num_samples"] == 2
    # Continuing GRPO from that model at a ratio its summary tokens never trained is refused by name.
    again = ["grpo", "--train", str(data / "data.jsonl"), "--model", str(final), "--out-dir", str(tmp_path / "again"),
             "--steps", "1", "--set", "video.num_frames=8", "--set", "progress=false", "--set", "compress.window=8"]
    capsys.readouterr()
    assert main([*again, "--set", "compress.ratios=8"]) == 2
    assert "ratio(s) [8] were not trained" in capsys.readouterr().err
    assert main([*args[:4], str(tmp_path / "bad"), *args[5:], "--set", "compress.ratios=0"]) == 2
    assert "positive integer" in capsys.readouterr().err


def test_a_trainable_vision_tower_gets_gradients_through_the_compressed_prefix(tmp_path):
    samples, frames = flash_set(2, num_frames=8)
    trainer = GRPOTrainer(load_adapter(ModelConfig(seed=8)), _config(tmp_path, steps=1, train_vision=True), samples, frames)
    before = {n: p.detach().clone() for n, p in trainer.adapter.hf.named_parameters() if ".visual." in n}
    record = trainer.train()[-1]
    assert record["grad_norm"] > 0 and record["drift_max"] < 1e-4
    after = dict(trainer.adapter.hf.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)  # the re-encoded embeddings carry gradients


def test_deepstack_family_is_refused_at_setup_by_both_trainers_and_by_inference(tmp_path):
    """Qwen3-VL adds vision features inside the first LLM layers, which the compressed paths do not
    carry: refused where summary tokens attach (before any step), not mid-run."""
    samples, frames = flash_set(2)
    qwen3 = build_tiny_adapter("qwen3_vl")
    with pytest.raises(ConfigError, match="DeepStack"):
        GRPOTrainer(qwen3, _config(tmp_path / "grpo"), samples, frames)
    sft = SFTConfig(train=str(tmp_path / "grpo" / "train.jsonl"), out_dir=str(tmp_path / "sft"), steps=1, progress=False,
                    compress=CompressConfig(ratios=(2,), window=WINDOW))
    with pytest.raises(ConfigError, match="DeepStack"):
        SFTTrainer(build_tiny_adapter("qwen3_vl"), sft, samples, frames)
    with pytest.raises(ConfigError, match="DeepStack"):
        SummaryTokens.from_adapter(qwen3, ratios=[2], window=WINDOW).attach(qwen3)
