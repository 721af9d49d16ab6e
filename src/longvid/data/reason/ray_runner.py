"""The same pipeline on Ray Data, for video collections that outgrow one machine (`longvid[ray]`).

Videos are independent, so Ray Data spreads them over a pool of actors (`map_batches`); each actor
runs every stage of its videos with the asyncio runner's own code (`ReasonRun.collect`: the same
units, validation and ordering), keeping one journal per video under `<out>/journal-ray/`, so a
rerun with --resume skips finished work whichever actor did it. The driver gathers rows and counts
and writes the dataset and summary exactly as the asyncio runner does.

The actors wait on HTTP most of the time: each asks for a fraction of a CPU (`num_cpus`, default
0.25) so a pool sized to the cores cannot take every CPU and starve Ray's own read and map tasks,
which stalls the job (see REFERENCE.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass

from ...errors import ConfigError
from .client import ChatClient, RetryPolicy
from .runner import ReasonConfig, ReasonRun, check_settings, discover, write_outputs
from .summary import Summary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSpec:
    """What an actor needs to build its own client (clients hold sockets and cannot be pickled)."""

    base_url: str
    model: str
    policy: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    api_key: str = "unused"

    def client(self) -> ChatClient:
        return ChatClient(self.base_url, self.model, self.policy, self.api_key)


def journal_dir(config: ReasonConfig):
    return config.out / f"journal-ray{config.suffix}"


class VideoWorker:
    """A Ray Data actor: one batch of videos in, one row per video out (its rows and counts as JSON)."""

    def __init__(self, config: ReasonConfig, caption: ServerSpec, llm: ServerSpec):
        self.config, self.caption, self.llm = config, caption, llm

    def __call__(self, batch: dict) -> dict:
        videos = [{"video": str(v), "path": str(p)} for v, p in zip(batch["video"], batch["path"])]
        results = asyncio.run(self._all(videos))
        return {
            "video": [v["video"] for v in videos],
            "rows": [json.dumps(rows) for rows, _ in results],
            "summary": [json.dumps(summary.to_json()) for _, summary in results],
        }

    async def _all(self, videos: list[dict]) -> list[tuple[list[dict], Summary]]:
        return await asyncio.gather(*(self._one(v) for v in videos))

    async def _one(self, video: dict) -> tuple[list[dict], Summary]:
        name = hashlib.blake2b(video["video"].encode(), digest_size=12).hexdigest()
        config = dataclasses.replace(
            self.config, journal=journal_dir(self.config) / f"{name}.jsonl", resume=True, progress=False
        )
        captioner, llm = self.caption.client(), self.llm.client()
        run = ReasonRun(config, captioner, llm)
        try:
            rows = await run.collect([video])
        finally:
            await captioner.close()
            await llm.close()
        return rows, run.summary


def run_ray(
    config: ReasonConfig,
    caption: ServerSpec,
    llm: ServerSpec,
    *,
    workers: int = 2,
    num_cpus: float = 0.25,
    videos_per_batch: int = 1,
) -> Summary:
    """Run the pipeline on the Ray cluster this process is connected to (`ray.init` first)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray Data: pip install 'longvid[ray]'") from None
    if journal_dir(config).exists() and not config.resume:
        raise ConfigError(f"{journal_dir(config)} exists: pass --resume to continue that run, or choose another --out")
    check_settings(config, caption.model, llm.model)
    journal_dir(config).mkdir(parents=True, exist_ok=True)
    videos = discover(config.videos, config.shard)
    summary = Summary()
    if videos:
        dataset = ray.data.from_items(videos).map_batches(
            VideoWorker,
            fn_constructor_kwargs={"config": config, "caption": caption, "llm": llm},
            batch_size=videos_per_batch,
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=num_cpus,
        )
        results = dataset.take_all()
    else:
        results = []
    position = {v["video"]: i for i, v in enumerate(videos)}
    rows = []
    for result in sorted(results, key=lambda r: position[r["video"]]):
        rows += json.loads(result["rows"])
        summary.merge(json.loads(result["summary"]))
    write_outputs(config, rows, summary)
    return summary
