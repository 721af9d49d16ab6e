"""GRPO from the command line under torchrun with two data-parallel ranks (gloo), resume included."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from longvid.checkpoint import latest_checkpoint
from longvid.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _torchrun_grpo(data: Path, out: Path, steps: int, *extra: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "longvid.cli", "grpo", "--train", str(data), "--out-dir", str(out), "--steps", str(steps),
           "--set", "video.num_frames=8", "--set", "batch_size=2", "--set", "group_size=2",
           "--set", "max_new_tokens=4", "--set", "beta=0.04", "--set", "save_every=1",
           "--set", "progress=false",
           # A reward that varies within a group from the first step, so the policy moves.
           "--set", 'rewards={"reward_fns:shorter_is_better": 1.0}', *extra]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stderr[-4000:]}"


def _history(out: Path) -> list[dict]:
    return torch.load(latest_checkpoint(out / "checkpoints") / "state.pt", weights_only=True)["history"]


def test_grpo_under_torchrun_with_two_data_parallel_ranks_resumes_where_it_stopped(tmp_path):
    assert main(["data", "synth", "--out", str(tmp_path / "synth"), "--num", "6", "--frames", "8", "--specs"]) == 0
    data = tmp_path / "synth" / "data.jsonl"
    full = tmp_path / "full"
    _torchrun_grpo(data, full, 3)
    # A run that stopped after step 2 of the same 3-step schedule: the full run's folder, rewound.
    run = tmp_path / "run"
    shutil.copytree(full, run, symlinks=True)  # `latest` is a relative symlink: keep it one
    shutil.rmtree(run / "checkpoints" / "step-000003")
    (run / "checkpoints" / "latest").unlink()
    os.symlink("step-000002", run / "checkpoints" / "latest")
    _torchrun_grpo(data, run, 4, "--resume")  # and asked for one more step than before
    assert latest_checkpoint(run / "checkpoints").name == "step-000004"

    before, after = _history(full), _history(run)
    assert [h["step"] for h in after] == [1, 2, 3, 4]  # the history continues, not restarted
    # Rank 0's records. Step 3 is the first one the resumed job computes: its rollout streams depend
    # on (seed, step, place) only and the weights, optimizer and sample order come back from the
    # checkpoint, so its rollouts, loss, KL and gradient are the uninterrupted run's (its update, not
    # recorded here, uses the 4-step schedule's learning rate).
    for a, b in zip(before, after[:3], strict=True):
        assert a["reward"] == b["reward"] and a["response_length"] == b["response_length"]
        for key in ("loss", "kl", "grad_norm", "drift"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-9), (a["step"], key)
    assert before[-1]["kl"] > 0  # the policy did move away from the reference
