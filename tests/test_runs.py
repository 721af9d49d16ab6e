"""The run folder owns its run: stored config, lock, --resume/--overwrite, pruning, `latest`, stale
temporary folders, and checkpoints that say how they were trained."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from longvid.checkpoint import _prune, latest_checkpoint, save_checkpoint
from longvid.cli import main
from longvid.model.folder import resolve_model_path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert main(["data", "synth", "--out", str(out), "--num", "4", "--frames", "8"]) == 0
    return out / "data.jsonl"


def sft(data, run, *extra):
    return main(["sft", "--train", str(data), "--out-dir", str(run), "--set", "video.num_frames=8",
                 "--set", "progress=false", "--set", "grad_accum=1", "--set", "log_every=0", *extra])


def test_rerun_into_a_used_folder_is_refused_and_overwrite_keeps_the_new_checkpoint(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert sft(data, run, "--steps", "3", "--set", "save_every=1") == 0
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-000002", "step-000003"]
    capsys.readouterr()
    # Before: exit 0, then pruning by name deleted the new step-000002 and `latest` dangled.
    assert sft(data, run, "--steps", "2") == 2
    err = capsys.readouterr().err
    assert "already holds a run (checkpoints (step-000003))" in err and "--resume" in err and "--overwrite" in err
    assert os.readlink(run / "checkpoints" / "latest") == "step-000003"  # untouched
    assert sft(data, run, "--steps", "2", "--overwrite") == 0
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-000002"]
    assert latest_checkpoint(run / "checkpoints") == run / "checkpoints" / "step-000002"
    assert sft(data, run, "--steps", "3", "--resume") == 0
    assert os.readlink(run / "checkpoints" / "latest") == "step-000003"
    commands = (run / "command.txt").read_text()
    assert commands.count("longvid sft") == 2 and "--resume" in commands  # the overwritten run's history is gone


def test_prune_keeps_the_newest_by_step_and_always_the_one_just_written(tmp_path):
    model = torch.nn.Linear(2, 2)

    class Saveable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def save_pretrained(self, path, safe_serialization=True):
            os.makedirs(path, exist_ok=True)
            torch.save(self.inner.state_dict(), os.path.join(path, "weights.pt"))

    for step in (9, 10, 100):
        save_checkpoint(tmp_path, step, Saveable(), None, {}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-000010", "step-000100"]
    # A checkpoint at a lower step than older ones survives its own pruning and becomes `latest`.
    save_checkpoint(tmp_path, 2, Saveable(), None, {}, keep=2)
    assert {p.name for p in tmp_path.glob("step-*")} == {"step-000002", "step-000010", "step-000100"}
    assert latest_checkpoint(tmp_path).name == "step-000002"
    (tmp_path / "step-notanumber").mkdir()
    _prune(tmp_path, 1, tmp_path / "step-000002")
    assert {p.name for p in tmp_path.glob("step-*")} == {"step-000002", "step-000100", "step-notanumber"}


def test_a_second_writer_is_refused_and_a_stale_lock_is_taken_over(data, tmp_path, capsys):
    import socket

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": "then"}))
        assert sft(data, run, "--steps", "1") == 2
        err = capsys.readouterr().err
        assert f"in use by another run (process {holder.pid} on {socket.gethostname()} since then)" in err
        assert not (run / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone now: its lock is stale.
    assert sft(data, run, "--steps", "1") == 0
    assert not (run / ".lock").exists()  # released at the end
    # A lock from another host cannot be checked: refused, with how to clear it.
    (run / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    assert sft(data, run, "--steps", "2", "--resume") == 2
    assert "process 1 on elsewhere" in capsys.readouterr().err


def test_resume_reads_the_stored_config_and_refuses_unsafe_changes(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert sft(data, run, "--steps", "2", "--set", "lora.rank=4", "--set", "optim.lr=0.002") == 0
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert stored["lora"]["rank"] == 4 and stored["optim"]["lr"] == 0.002 and stored["optim"]["betas"] == [0.9, 0.999]
    # No --set lora.rank=4 again: config.yaml supplies it (before: AttributeError ... peft_config).
    assert main(["sft", "--out-dir", str(run), "--steps", "3", "--resume"]) == 0
    assert (run / "checkpoints" / "step-000003" / "model" / "adapter_model.safetensors").is_file()
    capsys.readouterr()
    assert main(["sft", "--out-dir", str(run), "--steps", "4", "--resume", "--set", "optim.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr: stored 0.002, given 0.5" in err and "steps, save_every, log_every, progress" in err
    assert main(["sft", "--out-dir", str(run), "--resume", "--overwrite"]) == 2
    assert "contradict" in capsys.readouterr().err


def test_stale_temporary_folders_are_cleaned_at_start(data, tmp_path):
    run = tmp_path / "run"
    assert sft(data, run, "--steps", "1") == 0
    stale = run / "checkpoints" / ".tmp-step-000002-99999"
    (stale / "model").mkdir(parents=True)
    assert sft(data, run, "--steps", "2", "--resume") == 0
    assert not stale.exists() and os.readlink(run / "checkpoints" / "latest") == "step-000002"


def test_latest_works_as_a_model_folder_and_eval_uses_the_trained_settings(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert sft(data, run, "--steps", "1", "--set", "video.size=84") == 0
    latest = run / "checkpoints" / "latest" / "model"
    meta = json.loads((latest / "longvid.json").read_text())
    assert meta["video"]["num_frames"] == 8 and meta["video"]["size"] == 84 and meta["recipe"] == "sft"
    capsys.readouterr()
    out = tmp_path / "eval"
    assert main(["eval", "--data", str(data), "--model", str(latest), "--out", str(out), "--max-new-tokens", "2"]) == 0
    printed = capsys.readouterr().out
    assert "video settings from" in printed and "num_frames=8" in printed and "size=84" in printed
    assert json.loads((out / "eval.json").read_text())["num_frames"] == 8
    # Explicit flags win, and say so.
    assert main(["eval", "--data", str(data), "--model", str(latest), "--out", str(out), "--max-new-tokens", "2",
                 "--frames", "4"]) == 0
    assert "from flags: num_frames=4" in capsys.readouterr().out
    assert json.loads((out / "eval.json").read_text())["num_frames"] == 4


def test_the_text_pointer_of_older_runs_still_resolves(tmp_path):
    (tmp_path / "step-000007" / "model").mkdir(parents=True)
    (tmp_path / "step-000007" / "state.pt").write_bytes(b"")
    (tmp_path / "latest").write_text("step-000007\n")
    assert resolve_model_path(tmp_path / "latest" / "model") == tmp_path / "step-000007" / "model"
    assert latest_checkpoint(tmp_path) == tmp_path / "step-000007"


def test_a_lora_checkpoint_loads_as_its_base_with_the_adapter_merged(data, tmp_path, capsys):
    from longvid.config import ModelConfig
    from longvid.model import load_adapter

    run = tmp_path / "run"
    assert sft(data, run, "--steps", "2", "--set", "lora.rank=4", "--set", "optim.lr=0.05") == 0
    folder = run / "checkpoints" / "latest" / "model"
    merged = load_adapter(ModelConfig(path=str(folder)))
    base = load_adapter(ModelConfig())
    trained = {k: v for k, v in merged.hf.state_dict().items() if "language_model.layers.0.self_attn.q_proj.weight" in k}
    assert trained and all(not torch.equal(v, base.hf.state_dict()[k]) for k, v in trained.items())
    # Before: "no config.json". Now eval and grpo accept it.
    assert main(["eval", "--data", str(data), "--model", str(folder), "--out", str(tmp_path / "e"), "--max-new-tokens", "2"]) == 0
    # Without longvid.json and with no local base named, the message says what is missing.
    (folder / "longvid.json").unlink()
    capsys.readouterr()
    assert main(["eval", "--data", str(data), "--model", str(folder), "--out", str(tmp_path / "e")]) == 2
    assert "holds only a LoRA adapter" in capsys.readouterr().err


def test_grpo_from_a_checkpoint_defaults_to_its_video_settings_and_flags_win(data, tmp_path, capsys):
    run = tmp_path / "sft"
    assert sft(data, run, "--steps", "1", "--set", "video.size=84") == 0
    model = run / "checkpoints" / "latest" / "model"
    common = ["grpo", "--train", str(data), "--model", str(model), "--steps", "1", "--set", "group_size=2",
              "--set", "batch_size=1", "--set", "max_new_tokens=2", "--set", "progress=false"]
    assert main([*common, "--out-dir", str(tmp_path / "g1")]) == 0
    video = yaml.safe_load((tmp_path / "g1" / "config.yaml").read_text())["video"]
    assert (video["num_frames"], video["size"]) == (8, 84)
    assert main([*common, "--out-dir", str(tmp_path / "g2"), "--set", "video.size=56"]) == 0
    video = yaml.safe_load((tmp_path / "g2" / "config.yaml").read_text())["video"]
    assert (video["num_frames"], video["size"]) == (8, 56)


def test_resume_with_a_dangling_latest_is_a_message(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert sft(data, run, "--steps", "1") == 0
    import shutil

    shutil.rmtree(run / "checkpoints" / "step-000001")
    capsys.readouterr()
    assert sft(data, run, "--steps", "2", "--resume") == 2
    err = capsys.readouterr().err
    assert "--resume: " in err and "step-000001, which is not a complete checkpoint" in err
