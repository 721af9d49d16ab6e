"""`longvid data reason` from the command line: replay servers, exit codes, resume, in-process captions."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from http_utils import running_server
from longvid.cli import main
from reason_utils import write_gop_video
from replay_llm import Faults, ReplayServer


@pytest.fixture()
def videos(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    write_gop_video(root / "one.mp4", 64, 4, 8, size=32)
    return root


def test_cli_run_fail_and_resume(videos, tmp_path, capsys):
    common = ["data", "reason", "--videos", str(videos), "--out", str(tmp_path / "out"), "--clip-seconds", "4",
              "--retries", "1", "--backoff", "0.01", "--timeout", "5", "--no-progress"]
    with running_server(ReplayServer().app()) as captions, running_server(ReplayServer(Faults(fail_after=2)).app()) as llm:
        # No --llm-model / --caption-model: the one model each server lists is used.
        assert main([*common, "--caption-url", f"{captions}/v1", "--llm-url", f"{llm}/v1"]) == 1
    assert "rerun with --resume" in capsys.readouterr().err
    with running_server(ReplayServer().app()) as url:
        assert main([*common, "--caption-url", f"{url}/v1", "--llm-url", f"{url}/v1"]) == 2  # journal exists
        assert "--resume" in capsys.readouterr().err
        assert main([*common, "--caption-url", f"{url}/v1", "--llm-url", f"{url}/v1", "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "| written | order | 1 |" in printed and "| generate | goal | 0 | 1 |" in printed
    rows = [json.loads(line) for line in (videos / "reason.jsonl").read_text().splitlines()]
    assert sorted(r["category"] for r in rows) == ["order", "spatial", "temporal"]
    assert (tmp_path / "out" / "summary.md").read_text().startswith("# Reasoning data")


def test_cli_bad_shard_is_named(videos, tmp_path, capsys):
    code = main(["data", "reason", "--videos", str(videos), "--out", str(tmp_path), "--caption-url", "x",
                 "--llm-url", "y", "--shard", "two"])
    assert code == 2
    assert "--shard" in capsys.readouterr().err


def test_cli_in_process_captions(videos, tmp_path):
    """--caption-url local: the tiny model captions the clips in this process (no server)."""
    with running_server(ReplayServer().app()) as llm:
        code = main(["data", "reason", "--videos", str(videos), "--out", str(tmp_path / "out"), "--clip-seconds", "4",
                     "--caption-url", "local", "--caption-frames", "4", "--caption-size", "56", "--caption-tokens", "8",
                     "--llm-url", f"{llm}/v1", "--no-progress"])
    assert code == 0
    journal = [json.loads(l) for l in (tmp_path / "out" / "journal.jsonl").read_text().splitlines()]
    assert sum(e["stage"] == "caption" for e in journal) == 4


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL a real `longvid data reason` process midway, rerun with --resume: the same rows as a
    run never interrupted, no journal key twice, nothing finished asked again."""
    videos = tmp_path / "videos"
    (videos / "more").mkdir(parents=True)
    for name in ("a.mp4", "b.mp4", "more/c.mp4"):
        write_gop_video(videos / name, 64, 4, 8, size=32)

    def args(out, dataset, url):
        return ["data", "reason", "--videos", str(videos), "--out", str(tmp_path / out), "--dataset",
                str(videos / dataset), "--clip-seconds", "4", "--caption-url", f"{url}/v1", "--llm-url", f"{url}/v1",
                "--concurrency", "2", "--no-progress"]

    with running_server(ReplayServer().app()) as url:
        assert main(args("ref", "ref.jsonl", url)) == 0
    expected = (videos / "ref.jsonl").read_text()

    journal = tmp_path / "out" / "journal.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    with running_server(ReplayServer(Faults(delay=0.2)).app()) as url:
        proc = subprocess.Popen([sys.executable, "-m", "longvid.cli", *args("out", "out.jsonl", url)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not (journal.exists() and len(journal.read_bytes().splitlines()) >= 20):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    before = journal.read_bytes().splitlines()
    assert not (videos / "out.jsonl").exists()  # killed before it could write the dataset
    healthy = ReplayServer()
    with running_server(healthy.app()) as url:
        assert main([*args("out", "out.jsonl", url), "--resume"]) == 0
    assert (videos / "out.jsonl").read_text() == expected
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    keys = [(e["video"], e["stage"], e["part"]) for e in entries]
    assert len(keys) == len(set(keys))
    done_before = sum(1 for line in before if line.endswith(b"}"))
    assert len(entries) - done_before == sum(healthy.calls.values()) + sum(
        1 for e in entries[done_before:] if e["stage"] == "segment")
