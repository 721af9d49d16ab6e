"""Preemption: a real SIGTERM finishes the step, saves, exits 75 and resumes exactly; SIGINT alike;
every rank agrees; a full disk or a permission error while saving is named and loses nothing."""

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dist_utils import run_ranks
from helpers import flash_set
from longvid.checkpoint import CheckpointError, latest_checkpoint, load_state
from longvid.cli import main
from longvid.config import ModelConfig, VideoConfig
from longvid.model import load_adapter
from longvid.preempt import EXIT_PREEMPTED, Preempted
from longvid.sft.trainer import SFTConfig, SFTTrainer
from longvid.training import OptimConfig

SRC = Path(__file__).parent.parent / "src"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert main(["data", "synth", "--out", str(out), "--num", "4", "--frames", "8"]) == 0
    return out / "data.jsonl"


def _sft_args(data, run, steps):
    return ["sft", "--train", str(data), "--out-dir", str(run), "--steps", str(steps), "--set", "video.num_frames=8",
            "--set", "progress=false", "--set", "grad_accum=1", "--set", "log_every=1", "--set", "optim.warmup_steps=2"]


def _losses(run):
    return [h["loss"] for h in load_state(latest_checkpoint(Path(run) / "checkpoints"))["history"]]


def test_sigterm_saves_the_step_exits_75_and_resumes_exactly(data, tmp_path):
    steps = 12
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "longvid.cli", "--log-level", "INFO", *_sft_args(data, run, steps)],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "sft step 2:" in line:
                proc.send_signal(signal.SIGTERM)  # what SLURM and Kubernetes send before preemption
                break
        _, rest = proc.communicate(timeout=300)
    finally:
        proc.kill()
    log = "".join(lines) + rest
    assert proc.returncode == EXIT_PREEMPTED, log
    assert "received SIGTERM" in log and "continue with --resume" in log
    stopped = load_state(latest_checkpoint(run / "checkpoints"))["step"]
    assert 2 <= stopped < steps

    torch.set_num_threads(1)
    assert main([*_sft_args(data, run, steps), "--resume"]) == 0
    assert main(_sft_args(data, tmp_path / "whole", steps)) == 0
    assert _losses(run) == _losses(tmp_path / "whole")
    assert len(_losses(run)) == steps


def _config(tmp_path, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    train = tmp_path / "train.jsonl"
    train.write_text("{}\n")
    base = dict(train=str(train), out_dir=str(tmp_path / "run"), steps=6, grad_accum=2, progress=False, log_every=0,
                video=VideoConfig(num_frames=16), optim=OptimConfig(lr=2e-3, warmup_steps=1))
    base.update(kw)
    return SFTConfig(**base)


def test_sigint_during_a_step_finishes_it_then_saves_and_resume_is_exact(tmp_path):
    samples, frames = flash_set(6)
    full = SFTTrainer(load_adapter(ModelConfig(seed=5)), _config(tmp_path / "a"), samples, frames).train()
    calls = {"n": 0}

    def interrupting(sample):
        calls["n"] += 1
        if calls["n"] == 5:  # inside step 3 (two samples a step)
            os.kill(os.getpid(), signal.SIGINT)
        return frames(sample)

    cfg = _config(tmp_path / "b")
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs as a background job
    with pytest.raises(Preempted) as stop:
        SFTTrainer(load_adapter(ModelConfig(seed=5)), cfg, samples, interrupting).train()
    assert stop.value.step == 3 and stop.value.checkpoint.name == "step-000003"
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    resumed = SFTTrainer(load_adapter(ModelConfig(seed=99)), cfg, samples, frames).train(resume=True)
    assert [h["loss"] for h in resumed] == [h["loss"] for h in full]


def _signal_one_rank(rank, world, tmp):
    from longvid.parallel.mesh import init_mesh

    mesh = init_mesh(sp=1)
    samples, frames = flash_set(4)
    calls = {"n": 0}

    def loader(sample):
        calls["n"] += 1
        if rank == 1 and calls["n"] == 3:  # rank 1 only, inside its second step
            os.kill(os.getpid(), signal.SIGTERM)
        return frames(sample)

    cfg = SFTConfig(train=__file__, out_dir=f"{tmp}/dp", steps=6, grad_accum=2, progress=False, log_every=0,
                    video=VideoConfig(num_frames=16), optim=OptimConfig(lr=1e-3, warmup_steps=0))
    try:
        SFTTrainer(load_adapter(ModelConfig(seed=1)), cfg, samples, loader, mesh=mesh).train()
    except Preempted as e:
        return e.step, e.checkpoint is not None
    return None


def test_every_rank_stops_at_the_same_step_when_one_is_signalled(tmp_path):
    results = run_ranks(_signal_one_rank, 2, str(tmp_path), timeout=300)
    assert results == [(2, True), (2, True)]  # both stopped after step 2, both know the checkpoint
    assert latest_checkpoint(tmp_path / "dp" / "checkpoints").name == "step-000002"


@pytest.mark.parametrize("code,message", [(errno.ENOSPC, "no space left on device"), (errno.EACCES, "permission denied")])
def test_a_failed_save_is_named_and_the_previous_checkpoint_stays_valid(tmp_path, monkeypatch, code, message):
    import longvid.checkpoint as checkpoint

    samples, frames = flash_set(4)
    cfg = _config(tmp_path, steps=4, save_every=2)
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        if "step-000004" in str(f):
            raise OSError(code, os.strerror(code), str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    with pytest.raises(CheckpointError, match=rf"{message} while writing checkpoint .*step-000004.*step-000002\) is unchanged"):
        SFTTrainer(load_adapter(ModelConfig(seed=1)), cfg, samples, frames).train()
    monkeypatch.undo()
    ckpts = tmp_path / "run" / "checkpoints"
    assert latest_checkpoint(ckpts).name == "step-000002"
    assert not list(ckpts.glob(".tmp-*")) and not (ckpts / "step-000004").exists()
    resumed = SFTTrainer(load_adapter(ModelConfig(seed=1)), cfg, samples, frames)
    assert resumed.resume() and resumed.step == 2


def test_a_torch_zip_writer_error_on_a_full_disk_says_disk(tmp_path, monkeypatch):
    import longvid.checkpoint as checkpoint

    samples, frames = flash_set(2)
    cfg = _config(tmp_path, steps=1, grad_accum=1)

    def zip_writer_failure(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1600 vs 1488")

    monkeypatch.setattr(checkpoint.torch, "save", zip_writer_failure)
    monkeypatch.setattr(checkpoint, "_disk_full", lambda path: True)
    with pytest.raises(CheckpointError, match="no space left on device while writing checkpoint"):
        SFTTrainer(load_adapter(ModelConfig(seed=1)), cfg, samples, frames).train()
