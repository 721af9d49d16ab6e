"""`longvid data reason` end to end over HTTP: a replay server for the reasoning LLM (malformed
replies, 500, 429, timeouts), kill-and-resume equal to an uninterrupted run, shards, and captions
from `longvid serve` with the tiny model."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
from collections import Counter

import pytest

from http_utils import running_server
from longvid.data.dataset import VideoDataset
from longvid.data.reason.client import ChatClient, RetryPolicy
from longvid.data.reason.runner import ReasonConfig, discover, run_reason
from longvid.data.reason.units import Budget
from longvid.errors import ConfigError
from reason_utils import write_gop_video
from replay_llm import Faults, ReplayServer

FAST = RetryPolicy(retries=3, backoff=0.01, max_backoff=0.05, timeout=1.0)
NUM_VIDEOS = 3


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Three 16 s videos with a keyframe every 2 s: four 4 s clips each, cut without re-encoding."""
    root = tmp_path_factory.mktemp("collection")
    (root / "videos" / "sub").mkdir(parents=True)
    for i, rel in enumerate(["videos/a.mp4", "videos/b.mp4", "videos/sub/c.mp4"]):
        write_gop_video(root / rel, 64, 4, 8, size=32)
    return root / "videos"


def config(videos, out, dataset, **kw) -> ReasonConfig:
    return ReasonConfig(videos=videos, out=out, dataset=dataset, clip_seconds=4.0, concurrency=4, progress=False,
                        budget=Budget(caption_tokens=16, llm_tokens=512), **kw)


def run(cfg: ReasonConfig, caption_url: str, llm_url: str, policy: RetryPolicy = FAST):
    return asyncio.run(run_reason(cfg, ChatClient(f"{caption_url}/v1", "replay", policy),
                                  ChatClient(f"{llm_url}/v1", "replay", policy)))


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pipeline_with_faults_keeps_exactly_the_valid_items(videos, tmp_path):
    server = ReplayServer(Faults(error_500=("temporal",), error_429=("spatial",), slow=("order",), slow_seconds=1.5))
    with running_server(server.app()) as url:
        cfg = config(videos, tmp_path / "out", videos.parent / "fault.jsonl")
        summary = run(cfg, url, url)
    assert summary.num_failed == 0
    # Each injected fault cost one retry per video and was then answered.
    assert server.statuses[500] == NUM_VIDEOS and server.statuses[429] == NUM_VIDEOS
    assert server.calls["temporal"] == server.calls["spatial"] == server.calls["order"] == 2 * NUM_VIDEOS
    assert server.calls["caption"] == 4 * NUM_VIDEOS and server.calls["goal"] == NUM_VIDEOS

    out = rows(cfg.dataset)
    assert Counter(r["category"] for r in out) == {"temporal": 3, "spatial": 3, "order": 3}
    table = summary.rows()
    reasons = {(s, c): why for s, c, _, _, _, why in table}
    assert reasons["generate", "goal"] == "not JSON x3"
    assert reasons["check", "plot"] == "answer not among A-D x3"
    assert reasons["check", "spatial"] == "duplicate options x3, timestamp outside video x3"
    assert reasons["refine", "plot"] == "no reasoning x3"
    kept = {(s, c): k for s, c, k, _, _, _ in table}
    assert kept["segment", "clips"] == 4 * NUM_VIDEOS and kept["caption", "-"] == 4 * NUM_VIDEOS
    assert (tmp_path / "out" / "summary.md").read_text().count("| generate |") == 5

    # The rows are our schema: they load as a dataset (videos inside its root) and keep all options.
    dataset = VideoDataset.from_jsonl(cfg.dataset, num_frames=4, size=(28, 28))
    assert len(dataset) == 9 and dataset.num_bad == 0
    for sample in dataset.samples:
        assert len(sample.options) == 4 and sample.answer in "ABCD" and sample.reasoning
        assert all(0 <= t <= 16.0 for t in sample.extra["timestamps"])
        if sample.category != "order":
            assert sample.reasoning.startswith("Checking the video") and sample.extra["refined"]
    assert dataset.load_frames(dataset.samples[0]).pixels.shape == (4, 28, 28, 3)
    order = next(s for s in dataset.samples if s.category == "order")
    # The ordering answer follows the events' true times: the right option lists them by time.
    listed = order.question.split("? ", 1)[1].split("; ")
    by_number = {int(x[1]): x.split(") ", 1)[1] for x in listed}
    right = [by_number[int(n)] for n in order.answer_text.split(", ")]
    assert right == ["the frame is almost black", "a dim grey frame", "a mid grey frame", "a bright frame"]


def test_a_run_that_fails_midway_resumes_to_the_uninterrupted_result(videos, tmp_path):
    with running_server(ReplayServer().app()) as url:
        reference = config(videos, tmp_path / "ref", videos.parent / "ref.jsonl")
        assert run(reference, url, url).num_failed == 0
    expected = rows(reference.dataset)

    # The LLM server dies after 5 replies: the run ends with failures counted, nothing invented.
    broken = ReplayServer(Faults(fail_after=5))
    cfg = config(videos, tmp_path / "out", videos.parent / "resumed.jsonl")
    with running_server(ReplayServer().app()) as caption_url, running_server(broken.app()) as llm_url:
        first = run(cfg, caption_url, llm_url, RetryPolicy(retries=1, backoff=0.01, timeout=1.0))
    assert first.num_failed > 0 and len(rows(cfg.dataset)) < len(expected)
    journal_lines = cfg.journal_path.read_text().splitlines()

    with pytest.raises(ConfigError, match="--resume"):
        run(cfg, caption_url, llm_url)
    healthy = ReplayServer()
    with running_server(healthy.app()) as url:
        cfg.resume = True
        second = run(cfg, url, url)
    assert second.num_failed == 0
    assert rows(cfg.dataset) == expected
    # Nothing finished before was asked again: no caption request, and the journal only grew.
    assert healthy.calls["caption"] == 0
    lines = cfg.journal_path.read_text().splitlines()
    assert lines[: len(journal_lines)] == journal_lines
    keys = [tuple(json.loads(l)[k] for k in ("video", "stage", "part")) for l in lines]
    assert len(keys) == len(set(keys))
    # Resuming with other settings would mix two runs in one journal: refused, naming the setting.
    with pytest.raises(ConfigError, match="clip_seconds: 4.0 then, 5.0 now"):
        run(dataclasses.replace(cfg, clip_seconds=5.0), url, url)
    # A third run has nothing left to do and writes the same rows.
    idle = ReplayServer()
    with running_server(idle.app()) as url:
        run(cfg, url, url)
    assert sum(idle.calls.values()) == 0 and rows(cfg.dataset) == expected


def test_a_torn_journal_line_is_dropped_and_redone(videos, tmp_path):
    with running_server(ReplayServer().app()) as url:
        cfg = config(videos, tmp_path / "out", videos.parent / "torn.jsonl")
        run(cfg, url, url)
        expected = rows(cfg.dataset)
        text = cfg.journal_path.read_text()
        cfg.journal_path.write_text(text[: len(text) - 25])  # killed in the middle of the last write
        cfg.resume = True
        run(cfg, url, url)
    assert rows(cfg.dataset) == expected


def test_shards_cover_every_video_exactly_once(videos, tmp_path):
    everyone = {v["video"] for v in discover(videos)}
    assert everyone == {"a.mp4", "b.mp4", "sub/c.mp4"}
    for n in (1, 2, 3, 5):
        parts = [{v["video"] for v in discover(videos, (i, n))} for i in range(n)]
        assert sum(len(p) for p in parts) == len(everyone) and set().union(*parts) == everyone
    # Sharded runs together write what one run writes.
    with running_server(ReplayServer().app()) as url:
        whole = config(videos, tmp_path / "whole", videos / "whole.jsonl")
        run(whole, url, url)
        merged = []
        for i in range(2):
            part = config(videos, tmp_path / "sharded", None, shard=(i, 2))
            run(part, url, url)
            assert part.dataset == videos / f"reason.shard-{i}-of-2.jsonl"
            merged += rows(part.dataset)
            part.dataset.unlink()
    assert sorted(merged, key=lambda r: r["id"]) == sorted(rows(whole.dataset), key=lambda r: r["id"])


def test_bad_settings_are_named(videos, tmp_path):
    with pytest.raises(ConfigError, match="--shard"):
        config(videos, tmp_path, None, shard=(2, 2))
    with pytest.raises(ConfigError, match="--dataset"):
        config(videos, tmp_path, tmp_path / "elsewhere" / "x.jsonl")
    with pytest.raises(ConfigError, match="--categories"):
        config(videos, tmp_path, None, categories=("humour",))


def test_end_to_end_with_captions_from_longvid_serve(videos, tmp_path):
    """Captions from the tiny model behind `longvid serve` (garbage text, real HTTP and video path),
    questions from the replay server; the output feeds the difficulty filter."""
    from longvid.cli import main
    from longvid.config import ModelConfig
    from longvid.model import load_adapter
    from longvid.serve import Engine, ServeLimits, create_app

    engine = Engine(load_adapter(ModelConfig()))
    out = tmp_path / "out"
    out.mkdir()
    limits = ServeLimits(num_frames=4, size=56, default_max_tokens=16)
    serve_app = create_app(engine, "longvid-tiny", out, limits)
    with running_server(serve_app) as caption_url, running_server(ReplayServer().app()) as llm_url:
        cfg = config(videos, out, videos.parent / "served.jsonl")
        summary = asyncio.run(run_reason(
            cfg, ChatClient(f"{caption_url}/v1", "longvid-tiny", RetryPolicy(timeout=120)),
            ChatClient(f"{llm_url}/v1", "replay", FAST)))
    assert summary.num_failed == 0, summary.failures
    caption_entries = [json.loads(l) for l in cfg.journal_path.read_text().splitlines() if '"stage": "caption"' in l]
    assert len(caption_entries) == 4 * NUM_VIDEOS
    kept = [e for e in caption_entries if e["ok"]]
    assert kept and all(isinstance(e["value"], str) and e["value"].strip() for e in kept)
    dataset = VideoDataset.from_jsonl(cfg.dataset, num_frames=4, size=(56, 56))
    assert len(dataset) > 0
    assert main(["data", "filter", "--data", str(cfg.dataset), "--num", "2", "--frames", "4", "--max-new-tokens", "4"]) == 0
    assert (videos.parent / "served.sft.jsonl").is_file() and (videos.parent / "served.rl.jsonl").is_file()
    shutil.rmtree(out / "clips")


def test_client_retries_only_what_may_pass():
    """429/5xx are retried with backoff up to the limit; a 400 is not retried; both end in RequestFailed."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from longvid.data.reason.client import RequestFailed

    calls = Counter()
    app = FastAPI()

    @app.post("/{status}/v1/chat/completions")
    async def fail(status: int):
        calls[status] += 1
        return JSONResponse({"error": {"message": "no", "type": "x", "param": None, "code": None}}, status_code=status)

    messages = [{"role": "user", "content": "hi"}]
    with running_server(app) as url:
        for status, attempts in ((503, 4), (429, 4), (400, 1), (404, 1)):
            client = ChatClient(f"{url}/{status}/v1", "m", FAST)
            with pytest.raises(RequestFailed, match=str(status)):
                asyncio.run(client.complete(messages, max_tokens=1, temperature=0))
            assert calls[status] == attempts and client.retries_done == attempts - 1


def test_without_refinement_items_keep_their_generated_reasoning(videos, tmp_path):
    server = ReplayServer()
    with running_server(server.app()) as url:
        cfg = config(videos, tmp_path / "out", videos.parent / "raw.jsonl", refine=False, categories=("plot", "order"))
        run(cfg, url, url)
    out = rows(cfg.dataset)
    assert Counter(r["category"] for r in out) == {"plot": 3, "order": 3}
    assert server.calls["refine"] == 0 and server.calls["temporal"] == 0
    assert all(not r["refined"] for r in out)
