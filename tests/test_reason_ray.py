"""The reasoning pipeline on Ray Data gives the asyncio runner's rows (small smoke test)."""

import asyncio
import json

import pytest

from http_utils import running_server
from longvid.data.reason.client import ChatClient, RetryPolicy
from longvid.data.reason.runner import ReasonConfig, run_reason
from longvid.data.reason.units import Budget
from reason_utils import write_gop_video
from replay_llm import Faults, ReplayServer

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'longvid[ray]'")

POLICY = RetryPolicy(retries=3, backoff=0.01, timeout=5.0)


@pytest.fixture(scope="module")
def cluster():
    # More logical CPUs than actors ask for: the HTTP actors take 0.25 each, Ray's own tasks the rest.
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", configure_logging=False)
    yield
    ray.shutdown()


def test_ray_runner_matches_asyncio_runner(cluster, tmp_path):
    from longvid.data.reason.ray_runner import ServerSpec, run_ray

    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4"):
        write_gop_video(videos / name, 64, 4, 8, size=32)

    def config(out, dataset, **kw):
        return ReasonConfig(videos=videos, out=tmp_path / out, dataset=videos / dataset, clip_seconds=4.0,
                            progress=False, budget=Budget(caption_tokens=16, llm_tokens=512), **kw)

    server = ReplayServer(Faults(error_500=("temporal",)))
    with running_server(server.app()) as url:
        spec = ServerSpec(f"{url}/v1", "replay", POLICY)
        summary = run_ray(config("ray", "ray.jsonl"), spec, spec, workers=2, num_cpus=0.25)
        reference = config("local", "local.jsonl")
        asyncio.run(run_reason(reference, ChatClient(f"{url}/v1", "replay", POLICY), ChatClient(f"{url}/v1", "replay", POLICY)))
        # Resuming a finished Ray run asks for nothing.
        calls = sum(server.calls.values())
        run_ray(config("ray", "ray.jsonl", resume=True), spec, spec, workers=1)
        assert sum(server.calls.values()) == calls
    ray_rows = [json.loads(l) for l in (videos / "ray.jsonl").read_text().splitlines()]
    local_rows = [json.loads(l) for l in (videos / "local.jsonl").read_text().splitlines()]
    assert ray_rows == local_rows and len(ray_rows) == 6
    assert summary.num_failed == 0 and server.statuses[500] >= 2
    assert summary.kept["written", "order"] == 2
