"""CoT-SFT: response-only loss, stage freezing, LoRA, exact resume, a run that learns."""

import math
import os

import pytest
import torch

from helpers import flash_set
from longvid.config import ModelConfig
from longvid.errors import ConfigError
from longvid.inputs import encode_sample, target_text, with_response
from longvid.model import load_adapter
from longvid.sft.trainer import SFTConfig, SFTTrainer
from longvid.training import LoRAConfig, OptimConfig, lr_lambda


def _config(tmp_path, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    train = tmp_path / "train.jsonl"
    train.write_text("{}\n")
    base = dict(train=str(train), out_dir=str(tmp_path / "run"), steps=4, grad_accum=2, progress=False, log_every=0,
                optim=OptimConfig(lr=2e-3, warmup_steps=1))
    base.update(kw)
    return SFTConfig(**base)


def test_labels_cover_exactly_the_response(tmp_path):
    adapter = load_adapter(ModelConfig())
    samples, frames = flash_set(1)
    f = frames(samples[0])
    enc = encode_sample(adapter, samples[0], f.pixels, f.timestamps)
    target = adapter.response_ids(target_text(samples[0]))
    embeds, positions, labels = with_response(adapter, enc.prompt, enc.visual, target)
    learned = labels[labels >= 0]
    assert learned.tolist() == target.tolist()
    # Position i predicts token i+1: the first learned label sits on the prompt's last token.
    assert labels[len(enc.prompt) - 2] == -100 and labels[len(enc.prompt) - 1] == target[0]
    assert labels[-1] == -100
    assert adapter.decode(target).startswith("<think>The red flash")
    assert positions.shape == (3, embeds.shape[0])


def test_resume_reproduces_the_uninterrupted_loss_curve(tmp_path):
    samples, frames = flash_set(6)
    full = SFTTrainer(load_adapter(ModelConfig(seed=5)), _config(tmp_path / "a", steps=6), samples, frames).train()

    calls = {"n": 0}

    def crashing(sample):
        calls["n"] += 1
        if calls["n"] > 3 * 2:  # die inside step 4, after the step-3 checkpoint
            raise KeyboardInterrupt
        return frames(sample)

    cfg = _config(tmp_path / "b", steps=6, save_every=3)
    with pytest.raises(KeyboardInterrupt):
        SFTTrainer(load_adapter(ModelConfig(seed=5)), cfg, samples, crashing).train()
    resumed = SFTTrainer(load_adapter(ModelConfig(seed=99)), cfg, samples, frames).train(resume=True)
    assert [h["loss"] for h in resumed] == [h["loss"] for h in full]
    assert os.readlink(tmp_path / "b" / "run" / "checkpoints" / "latest") == "step-000006"


def test_freezing_vision_and_projector_leaves_them_unchanged(tmp_path):
    samples, frames = flash_set(4)
    adapter = load_adapter(ModelConfig(seed=2))
    before = {k: v.clone() for k, v in adapter.hf.state_dict().items()}
    cfg = _config(tmp_path, steps=2, freeze_vision=True, freeze_projector=True)
    SFTTrainer(adapter, cfg, samples, frames).train()
    after = adapter.hf.state_dict()
    visual = [k for k in before if ".visual." in k]
    llm = [k for k in before if ".language_model.layers" in k]
    assert visual and all(torch.equal(before[k], after[k]) for k in visual)
    assert any(not torch.equal(before[k], after[k]) for k in llm)


def test_lora_trains_only_adapters_and_resumes(tmp_path):
    samples, frames = flash_set(4)
    adapter = load_adapter(ModelConfig(seed=2))
    base = {k: v.clone() for k, v in adapter.hf.state_dict().items()}
    cfg = _config(tmp_path, steps=3, save_every=2, lora=LoRAConfig(rank=4), freeze_vision=True, freeze_projector=True)
    history = SFTTrainer(adapter, cfg, samples, frames).train()
    trainable = [n for n, p in adapter.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    merged_changed = any("lora_B" in n and p.abs().sum() > 0 for n, p in adapter.model.named_parameters())
    assert merged_changed
    ckpt = tmp_path / "run" / "checkpoints" / "step-000003" / "model" / "adapter_model.safetensors"
    assert ckpt.is_file()
    for k, v in adapter.hf.state_dict().items():
        key = k.replace(".base_layer", "")
        if "lora_" not in k and key in base:
            assert torch.equal(v, base[key])
    assert all(math.isfinite(h["loss"]) for h in history)


def test_sft_learns_the_flash_task(tmp_path):
    from longvid.eval.mcq import evaluate

    train, frames = flash_set(120)
    test, test_frames = flash_set(24, offset=10_000)
    adapter = load_adapter(ModelConfig(seed=0))
    cfg = _config(tmp_path, steps=80, grad_accum=4, optim=OptimConfig(lr=3e-3, warmup_steps=8))
    history = SFTTrainer(adapter, cfg, train, frames).train()
    assert history[-1]["loss"] < 0.3 * history[0]["loss"]
    result = evaluate(adapter, test, test_frames, progress=False)
    assert result.accuracy >= 0.6 > result.chance


def test_config_errors_name_the_key(tmp_path):
    from longvid.config import load_config

    good = tmp_path / "t.jsonl"
    good.write_text("{}\n")
    with pytest.raises(ConfigError, match="stepz"):
        load_config(SFTConfig, None, [f"train={good}", "stepz=3"])
    with pytest.raises(ConfigError, match="video.num_frames"):
        load_config(SFTConfig, None, [f"train={good}", "video.num_frames=0"])
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(SFTConfig, None, [f"train={good}", "optim.lr=fast"])
    with pytest.raises(ConfigError, match="file not found"):
        load_config(SFTConfig, None, ["train=/nonexistent.jsonl"])
    cfg = load_config(SFTConfig, None, [f"train={good}", "optim.lr=1e-4", "video.num_frames=8"])
    assert cfg.optim.lr == 1e-4 and cfg.video.num_frames == 8


def test_lr_schedule_warms_up_then_decays():
    values = [lr_lambda(s, 4, 20, 0.1) for s in range(20)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(values[3:], values[4:]))
    assert values[-1] >= 0.1


@pytest.mark.parametrize("name", ["sft_tiny.yaml", "grpo_tiny.yaml"])
def test_shipped_tiny_recipes_load(tmp_path, name):
    from pathlib import Path

    from longvid.config import load_config
    from longvid.rl.trainer import GRPOConfig

    train = tmp_path / "t.jsonl"
    train.write_text("{}\n")
    cls = SFTConfig if name.startswith("sft") else GRPOConfig
    cfg = load_config(cls, Path(__file__).parent.parent / "configs" / name, [f"train={train}"])
    assert cfg.steps > 0 and cfg.video.num_frames == 32
