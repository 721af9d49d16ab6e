"""SFT with visual summary tokens: `compress.ratios` from the command-line form, summary parameters
trained and checkpointed (safetensors beside the model, exact resume), the checkpoint usable by NIAH."""

import json

import pytest
import torch

from helpers import crash_after, flash_set
from longvid.config import ModelConfig, load_config
from longvid.errors import ConfigError
from longvid.model import load_adapter
from longvid.model.compress import PARAMS_FILE, CompressConfig, SummaryTokens
from longvid.sft.trainer import SFTConfig, SFTTrainer
from longvid.training import OptimConfig


def _config(tmp_path, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    train = tmp_path / "train.jsonl"
    train.write_text("{}\n")
    base = dict(train=str(train), out_dir=str(tmp_path / "run"), steps=4, grad_accum=2, progress=False, log_every=0,
                optim=OptimConfig(lr=2e-3, warmup_steps=1), compress=CompressConfig(ratios=(2, 4), window=8))
    base.update(kw)
    return SFTConfig(**base)


def test_command_line_ratios_parse_and_bad_ones_are_refused(tmp_path):
    train = tmp_path / "t.jsonl"
    train.write_text("{}\n")
    cfg = load_config(SFTConfig, None, [f"train={train}", "compress.ratios=2,4,8,12,16"])
    assert cfg.compress.ratios == (2, 4, 8, 12, 16) and cfg.compress.window == 1440
    assert load_config(SFTConfig, None, [f"train={train}"]).compress is None
    with pytest.raises(ConfigError, match="positive integer"):
        load_config(SFTConfig, None, [f"train={train}", "compress.ratios=2,0"])
    with pytest.raises(ConfigError, match="comma-separated"):
        load_config(SFTConfig, None, [f"train={train}", "compress.ratios=2,x"])


def test_compressed_sft_trains_checkpoints_and_resumes_exactly(tmp_path):
    samples, frames = flash_set(6)
    trainer = SFTTrainer(load_adapter(ModelConfig(seed=5)), _config(tmp_path / "a", steps=6), samples, frames)
    start = trainer.compression.summary.embedding.detach().clone()
    full = trainer.train()
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in full)
    assert not torch.equal(trainer.compression.summary.embedding.detach(), start)
    final = tmp_path / "a" / "run" / "checkpoints" / "step-000006" / "model"
    assert (final / PARAMS_FILE).is_file()
    loaded = SummaryTokens.load(final, load_adapter(ModelConfig(path=str(final))))
    assert torch.equal(loaded.embedding.detach(), trainer.compression.summary.embedding.detach())
    exported = tmp_path / "a" / "run" / "final"  # the final export carries them too
    assert torch.equal(SummaryTokens.load(exported, load_adapter(ModelConfig(path=str(exported)))).embedding, loaded.embedding)

    crashing = crash_after(frames, 3 * 2)
    cfg = _config(tmp_path / "b", steps=6, save_every=3)
    with pytest.raises(KeyboardInterrupt):
        SFTTrainer(load_adapter(ModelConfig(seed=5)), cfg, samples, crashing).train()
    resumed = SFTTrainer(load_adapter(ModelConfig(seed=99)), cfg, samples, frames)
    history = resumed.train(resume=True)
    assert [h["loss"] for h in history] == [h["loss"] for h in full]


def test_cli_sft_with_compression_then_eval_and_niah_at_a_trained_ratio(tmp_path, capsys):
    from longvid.cli import main

    data = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(data), "--num", "4", "--frames", "8", "--specs"]) == 0
    run = tmp_path / "sft"
    assert main(["sft", "--train", str(data / "data.jsonl"), "--out-dir", str(run), "--steps", "1",
                 "--set", "video.num_frames=8", "--set", "progress=false", "--set", "grad_accum=1",
                 "--set", "compress.ratios=2,4", "--set", "compress.window=8"]) == 0
    ckpt = run / "checkpoints" / "step-000001" / "model"
    assert (ckpt / PARAMS_FILE).is_file()
    eval_args = ["eval", "--data", str(data / "data.jsonl"), "--model", str(ckpt), "--out", str(tmp_path / "eval"),
                 "--frames", "8", "--max-new-tokens", "4"]
    assert main([*eval_args, "--compress-ratio", "4"]) == 0
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["num_samples"] == 4
    capsys.readouterr()
    assert main([*eval_args, "--compress-ratio", "16"]) == 2
    assert "not trained" in capsys.readouterr().err
    assert main([*eval_args, "--compress-ratio", "0"]) == 2
    assert ">= 1" in capsys.readouterr().err
    assert main(["niah", "--model", str(ckpt), "--frames", "8", "--depths", "0,1", "--trials", "1", "--ratios", "1,2",
                 "--out", str(tmp_path / "niah")]) == 0
    assert (tmp_path / "niah" / "niah.png").is_file()
