"""The GRPO trainer: encode once, zero rollout/training drift, reference KL, exact resume."""

import dataclasses

import pytest
import torch

from helpers import crash_after, flash_set
from longvid.config import ModelConfig, VideoConfig
from longvid.errors import ConfigError
from longvid.model import load_adapter
from longvid.rl.rewards import RewardSuite
from longvid.rl.trainer import GRPOConfig, GRPOTrainer
from longvid.training import OptimConfig


def _config(tmp_path, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    train = tmp_path / "train.jsonl"
    train.write_text("{}\n")
    base = dict(train=str(train), out_dir=str(tmp_path / "run"), steps=2, batch_size=2, group_size=4,
                max_new_tokens=8, progress=False, log_every=0, video=VideoConfig(num_frames=8),
                optim=OptimConfig(lr=1e-2, warmup_steps=0))
    base.update(kw)
    return GRPOConfig(**base)


def _count_vision_calls(adapter):
    calls = {"n": 0}
    adapter.hf.model.visual.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    return calls


def test_each_video_is_encoded_once_and_rollout_equals_training_inputs(tmp_path):
    samples, frames = flash_set(2, num_frames=8)
    adapter = load_adapter(ModelConfig(seed=1))
    calls = _count_vision_calls(adapter)
    trainer = GRPOTrainer(adapter, _config(tmp_path, steps=3), samples, frames)
    history = trainer.train()
    # 3 steps x 2 prompts x (rollout + policy pass) use 2 encodings: the cache serves the rest.
    assert calls["n"] == 2
    assert trainer.cache.stats.misses == 2 and trainer.cache.stats.hits == 4
    for record in history:
        assert record["drift_max"] < 1e-4  # same inputs, same weights: only float noise
        assert 1 <= record["response_length"] <= 8
        assert set(record) >= {"reward/accuracy", "reward/format", "time/rollout", "time/policy", "clip_fraction"}


def test_records_accuracy_per_category_of_the_steps_rollouts(tmp_path):
    samples, frames = flash_set(4, num_frames=8)
    categories = ("temporal", "plot", "goal", "plot")
    samples = [dataclasses.replace(s, category=c) for s, c in zip(samples, categories)]
    trainer = GRPOTrainer(load_adapter(ModelConfig(seed=1)), _config(tmp_path, steps=2, batch_size=4, group_size=3), samples, frames)
    # An accuracy reward that scores by category, so every category's mean is known in advance.
    score = {"temporal": 1.0, "plot": 0.5, "goal": 0.0}
    trainer.rewards = RewardSuite({"accuracy": lambda prompts, completions, category, **_: [score[c] for c in category]})
    for record in trainer.train():
        assert {k: v for k, v in record.items() if k.startswith("accuracy/")} == {f"accuracy/{c}": v for c, v in score.items()}
        assert record["reward/accuracy"] == pytest.approx((1.0 + 0.5 + 0.0 + 0.5) / 4)


def test_with_a_video_key_cache_hits_skip_decoding(tmp_path):
    samples, frames = flash_set(2, num_frames=8)
    decoded = []

    def counting(sample):
        decoded.append(sample.id)
        return frames(sample)

    trainer = GRPOTrainer(load_adapter(ModelConfig(seed=1)), _config(tmp_path, steps=3), samples, counting,
                          video_key=lambda s: f"key:{s.id}")
    trainer.train()
    assert sorted(decoded) == sorted(s.id for s in samples)  # decoded on the two misses only
    assert trainer.cache.stats.hits == 4


def test_training_changes_the_policy_and_kl_grows_from_zero(tmp_path):
    samples, frames = flash_set(2, num_frames=8)
    adapter = load_adapter(ModelConfig(seed=1))
    before = {k: v.clone() for k, v in adapter.hf.state_dict().items()}
    # A reward that always prefers short answers gives non-zero advantages from the first step.
    cfg = _config(tmp_path, steps=3, beta=0.1, rewards={"reward_fns:shorter_is_better": 1.0})
    history = GRPOTrainer(adapter, cfg, samples, frames).train()
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert history[-1]["kl"] > 1e-6
    after = adapter.hf.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if "language_model" in k)
    assert all(torch.equal(before[k], after[k]) for k in before if ".visual." in k)


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    samples, frames = flash_set(3, num_frames=8)
    # beta > 0: the KL, unlike the on-policy loss value (~0), shows any difference in the weights.
    cfg_a = _config(tmp_path / "a", steps=4, beta=0.04, rewards={"reward_fns:shorter_is_better": 1.0})
    full = GRPOTrainer(load_adapter(ModelConfig(seed=2)), cfg_a, samples, frames).train()

    cfg_b = _config(tmp_path / "b", steps=4, save_every=2, beta=0.04, rewards={"reward_fns:shorter_is_better": 1.0})
    crashing = crash_after(frames, 4)  # two steps of two prompts, then die
    with pytest.raises(KeyboardInterrupt):
        GRPOTrainer(load_adapter(ModelConfig(seed=2)), cfg_b, samples, crashing).train()
    # The same starting model, as a restarted job builds it: the frozen reference is a copy of it (the
    # policy's weights come from the checkpoint; had they not, step 3 would not match).
    resumed = GRPOTrainer(load_adapter(ModelConfig(seed=2)), cfg_b, samples, frames).train(resume=True)
    for a, b in zip(full, resumed, strict=True):
        assert a["reward"] == b["reward"] and a["loss"] == pytest.approx(b["loss"], abs=1e-7)
        assert a["kl"] == pytest.approx(b["kl"], rel=1e-5, abs=1e-9)
    assert full[-1]["kl"] > 1e-6


def test_unfrozen_vision_tower_reencodes_for_the_policy_pass(tmp_path):
    samples, frames = flash_set(2, num_frames=8)
    adapter = load_adapter(ModelConfig(seed=1))
    calls = _count_vision_calls(adapter)
    trainer = GRPOTrainer(adapter, _config(tmp_path, steps=2, train_vision=True), samples, frames)
    trainer.train()
    # Per step and prompt: one cached encode for rollout (stale after each update) + one with gradients.
    assert calls["n"] == 2 * 2 * 2
    assert trainer.encoder_version == 2


def test_impossible_configs_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="group_size"):
        _config(tmp_path, group_size=1)
    with pytest.raises(ConfigError, match="reference=base"):
        _config(tmp_path, beta=0.1, reference="base")
    with pytest.raises(ConfigError, match="pack_tokens must be >= 0"):
        _config(tmp_path, pack_tokens=-1)
    from longvid.model.compress import CompressConfig
    with pytest.raises(ConfigError, match="pack_tokens and compress"):
        _config(tmp_path, pack_tokens=4096, compress=CompressConfig(ratios=(2,), window=8))


def test_lora_policy_with_the_adapter_disabled_as_reference(tmp_path):
    from longvid.training import LoRAConfig

    samples, frames = flash_set(2, num_frames=8)
    adapter = load_adapter(ModelConfig(seed=1))
    base = {k: v.clone() for k, v in adapter.hf.state_dict().items()}
    cfg = _config(tmp_path, steps=3, beta=0.1, reference="base", lora=LoRAConfig(rank=4),
                  rewards={"reward_fns:shorter_is_better": 1.0}, optim=OptimConfig(lr=5e-2, warmup_steps=0))
    trainer = GRPOTrainer(adapter, cfg, samples, frames)
    history = trainer.train()
    assert trainer.reference is None
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-6) and history[-1]["kl"] > 1e-6
    for k, v in adapter.hf.state_dict().items():
        key = k.replace(".base_layer", "")
        if "lora_" not in k and key in base:
            assert torch.equal(v, base[key]), k


def test_prompts_of_different_lengths_roll_out_in_one_batch_with_zero_drift(tmp_path):
    """The batched rollout left-pads the shorter prompt; training sees each prompt alone: same log-probs."""
    from helpers import flash_sample

    pairs = [flash_sample(0, num_frames=8), flash_sample(1, num_frames=16)]
    frames = {s.id: f for s, f in pairs}
    trainer = GRPOTrainer(load_adapter(ModelConfig(seed=1)), _config(tmp_path, steps=1), [s for s, _ in pairs],
                          lambda s: frames[s.id])
    lengths = {len(trainer._encode(s)[0].prompt) for s, _ in pairs}
    assert len(lengths) == 2
    (record,) = trainer.train()
    assert record["drift_max"] < 1e-4


def test_a_step_whose_groups_are_all_filtered_leaves_the_model_alone(tmp_path):
    samples, frames = flash_set(2, num_frames=8)
    adapter = load_adapter(ModelConfig(seed=1))
    before = {k: v.clone() for k, v in adapter.hf.state_dict().items()}
    cfg = _config(tmp_path, steps=1, filter_groups=True, rewards={"reward_fns:always_one": 1.0})
    (record,) = GRPOTrainer(adapter, cfg, samples, frames).train()
    assert record["groups_kept"] == 0 and record["grad_norm"] == 0.0 and record["time/policy"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in adapter.hf.state_dict().items())


def test_several_iterations_reuse_the_rollout_log_probs_as_old_policy(tmp_path):
    """num_iterations=2: two optimizer steps per batch; the second pass's ratio is against the log-probs
    stored before the first update, so it moves off 1 and the clip engages (never on one iteration)."""
    samples, frames = flash_set(2, num_frames=8)
    cfg = _config(tmp_path, steps=1, num_iterations=2, epsilon_low=0.01, epsilon_high=0.01,
                  rewards={"reward_fns:shorter_is_better": 1.0}, optim=OptimConfig(lr=5e-2, warmup_steps=0))
    trainer = GRPOTrainer(load_adapter(ModelConfig(seed=1)), cfg, samples, frames)
    (record,) = trainer.train()
    assert trainer.scheduler.last_epoch == 2
    assert record["clip_fraction"] > 0
    single = GRPOTrainer(load_adapter(ModelConfig(seed=1)), _config(tmp_path / "one", steps=1, epsilon_low=0.01,
                         epsilon_high=0.01, rewards={"reward_fns:shorter_is_better": 1.0}), samples, frames)
    assert single.train()[0]["clip_fraction"] == 0.0
