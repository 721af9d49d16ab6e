"""`longvid data reason`: long videos → clips → captions → reasoning questions → a validated jsonl.

The asyncio runner: stage after stage over this shard's videos, at most `concurrency` requests in
flight, every finished unit journaled (see journal.py) so a killed run resumes where it stopped.
The dataset and the summary are rebuilt from the journal at the end of every run, so a resumed
run writes exactly what an uninterrupted one would have.

Stages: segment → caption → merge → generate (temporal, goal, plot, spatial questions; ordering
items) → check (validate before spending a refinement) → refine (reasoning rewritten in the
"checking the video" style; question, options and answer kept) → validate → write.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ...errors import ConfigError, DataError
from . import stages, units
from .client import RequestFailed
from .journal import Journal
from .stages import CATEGORIES, Rejected
from .summary import Summary
from .units import Budget, Chat

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")


@dataclass
class ReasonConfig:
    videos: Path
    out: Path
    dataset: Path | None = None  # default: <videos>/reason[.shard-i-of-N].jsonl
    clip_seconds: float = 10.0
    cut: str = "auto"
    categories: tuple[str, ...] = CATEGORIES
    refine: bool = True
    budget: Budget = field(default_factory=Budget)
    concurrency: int = 8
    shard: tuple[int, int] = (0, 1)
    resume: bool = False
    progress: bool = True
    journal: Path | None = None  # default: <out>/journal[.shard-i-of-N].jsonl

    def __post_init__(self) -> None:
        self.videos, self.out = Path(self.videos), Path(self.out)
        if not self.videos.is_dir():
            raise ConfigError(f"--videos: {self.videos} is not a directory")
        index, count = self.shard
        if not (count >= 1 and 0 <= index < count):
            raise ConfigError(f"--shard: {index}/{count} must be i/N with 0 <= i < N")
        unknown = [c for c in self.categories if c not in CATEGORIES]
        if unknown or not self.categories:
            raise ConfigError(f"--categories: unknown {unknown}; known: {', '.join(CATEGORIES)}")
        if self.concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.clip_seconds <= 0:
            raise ConfigError(f"--clip-seconds must be positive, got {self.clip_seconds}")
        if self.cut not in ("auto", "copy", "reencode"):
            raise ConfigError(f"--cut must be auto, copy or reencode, got {self.cut!r}")
        if self.dataset is None:
            self.dataset = self.videos / f"reason{self.suffix}.jsonl"
        self.dataset = Path(self.dataset)
        if not self.videos.resolve().is_relative_to(self.dataset.parent.resolve()):
            raise ConfigError(
                f"--dataset: {self.dataset} must lie in {self.videos} or a folder above it, so its rows' video "
                "paths stay inside the dataset root"
            )

    @property
    def suffix(self) -> str:
        index, count = self.shard
        return "" if count == 1 else f".shard-{index}-of-{count}"

    @property
    def journal_path(self) -> Path:
        return Path(self.journal) if self.journal is not None else self.out / f"journal{self.suffix}.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.out / f"summary{self.suffix}.md"

    def settings(self, caption_model: str, llm_model: str) -> dict:
        """What decides the journal's contents: a resumed run must use the same."""
        return {
            "clip_seconds": self.clip_seconds, "cut": self.cut, "categories": list(self.categories),
            "refine": self.refine, "budget": dataclasses.asdict(self.budget),
            "caption_model": caption_model, "llm_model": llm_model,
        }


def check_settings(cfg: ReasonConfig, caption_model: str, llm_model: str) -> None:
    """Record the run's settings in `<out>/settings[.shard].json`; refuse to resume with others."""
    path = cfg.out / f"settings{cfg.suffix}.json"
    wanted = cfg.settings(caption_model, llm_model)
    if path.exists():
        recorded = json.loads(path.read_text())
        changed = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))
        if changed:
            detail = "; ".join(f"{k}: {recorded.get(k)!r} then, {wanted.get(k)!r} now" for k in changed)
            raise ConfigError(f"{path}: --resume with different settings ({detail}); use another --out")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(wanted, indent=1))


def discover(videos: Path, shard: tuple[int, int] = (0, 1)) -> list[dict]:
    """The shard's videos under `videos` (sorted), each `{"video": relative posix path, "path": absolute}`."""
    root = videos.resolve()
    found = []
    for path in sorted(videos.rglob("*")):
        if path.suffix.lower() not in VIDEO_SUFFIXES or not path.is_file():
            continue
        real = path.resolve()
        if not real.is_relative_to(root):
            raise DataError(f"{path}: links outside --videos {videos}; refusing to read it")
        video_id = path.relative_to(videos).as_posix()
        if stages.shard_of(video_id, shard[1]) == shard[0]:
            found.append({"video": video_id, "path": str(real)})
    return found


class ReasonRun:
    def __init__(self, config: ReasonConfig, caption_client: Chat, llm_client: Chat):
        self.config, self.captioner, self.llm = config, caption_client, llm_client
        self.summary = Summary()

    async def run(self) -> Summary:
        """This shard's videos through every stage; writes the dataset and the summary."""
        cfg = self.config
        if cfg.journal_path.exists() and not cfg.resume:
            raise ConfigError(f"{cfg.journal_path} exists: pass --resume to continue that run, or choose another --out")
        check_settings(cfg, self.captioner.model, self.llm.model)
        videos = discover(cfg.videos, cfg.shard)
        log.info("shard %d/%d: %d videos", *cfg.shard, len(videos))
        self._write(await self.collect(videos))
        return self.summary

    async def collect(self, videos: list[dict]) -> list[dict]:
        """`videos` through every stage (resuming from the journal); the dataset rows, in order."""
        cfg = self.config
        self.slots = asyncio.Semaphore(cfg.concurrency)
        with Journal(cfg.journal_path) as self.journal:
            await self._segment(videos)
            segmented = [e["value"] for v in videos if (e := self.journal.get(v["video"], "segment")) and e["ok"]]
            await self._caption(segmented)
            timelines = self._merge(segmented)
            await self._generate(segmented, timelines)
            checked = self._check(segmented)
            if cfg.refine:
                await self._refine(checked)
            return self._finalize(segmented, checked)

    # -- stages ----------------------------------------------------------------------------------

    async def _stage(self, name: str, jobs: list[tuple[str, str, Callable[[], Awaitable]]]) -> None:
        """Run the jobs not yet journaled, `concurrency` at a time; journal each result as it lands."""
        todo = [(video, part, job) for video, part, job in jobs if self.journal.get(video, name, part) is None]
        bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=name, disable=not self.config.progress,
                   dynamic_ncols=True)

        async def one(video: str, part: str, job: Callable[[], Awaitable]) -> None:
            async with self.slots:
                try:
                    result = await job()
                except RequestFailed as e:
                    self.summary.fail(name, f"{video} {part}: {e}", _category(name, part))
                    return
                finally:
                    bar.update()
            if isinstance(result, Rejected):
                self.journal.record(video, name, part, rejected=result.detail or result.code, code=result.code)
            else:
                self.journal.record(video, name, part, value=result)

        try:
            await asyncio.gather(*(one(*j) for j in todo))
        finally:
            bar.close()

    async def _segment(self, videos: list[dict]) -> None:
        cfg = self.config

        def job(video: dict) -> Callable[[], Awaitable]:
            clips_dir = cfg.out / "clips" / video["video"]
            return lambda: asyncio.to_thread(stages.segment, video, clips_dir, cfg.clip_seconds, cfg.cut)

        await self._stage("segment", [(v["video"], "", job(v)) for v in videos])
        for v in videos:
            entry = self.journal.get(v["video"], "segment")
            if entry is None:
                continue
            if entry["ok"]:
                self.summary.keep("segment")
                self.summary.keep("segment", "clips", len(entry["value"]["clips"]))
            else:
                self.summary.reject("segment", entry["code"])

    async def _caption(self, videos: list[dict]) -> None:
        budget = self.config.budget
        jobs = [
            (v["video"], str(c["index"]), lambda c=c: units.caption(self.captioner, c, budget))
            for v in videos for c in v["clips"]
        ]
        await self._stage("caption", jobs)
        self._count("caption", jobs)

    def _merge(self, videos: list[dict]) -> dict[str, str]:
        """Each fully captioned video's timeline (a video with a caption still missing waits for a
        resumed run; one whose captions were all rejected is dropped)."""
        timelines = {}
        for v in videos:
            entries = {c["index"]: self.journal.get(v["video"], "caption", str(c["index"])) for c in v["clips"]}
            if any(e is None for e in entries.values()):
                continue
            captions = {i: e["value"] for i, e in entries.items() if e["ok"]}
            if not captions:
                self.summary.reject("merge", "no captions")
                continue
            timelines[v["video"]] = stages.merge_captions(v["clips"], captions)
            self.summary.keep("merge")
        return timelines

    async def _generate(self, videos: list[dict], timelines: dict[str, str]) -> None:
        budget = self.config.budget
        jobs = [
            (v["video"], cat, lambda v=v, cat=cat: units.generate(self.llm, v, timelines[v["video"]], cat, budget))
            for v in videos if v["video"] in timelines for cat in self.config.categories
        ]
        await self._stage("generate", jobs)
        self._count("generate", jobs)

    def _check(self, videos: list[dict]) -> dict[str, list[tuple[str, dict]]]:
        """Validate generated items before refining them: `{video: [(part, item), ...]}` of the good ones."""
        checked: dict[str, list[tuple[str, dict]]] = {}
        for v in videos:
            for cat in self.config.categories:
                entry = self.journal.get(v["video"], "generate", cat)
                if entry is None or not entry["ok"]:
                    continue
                for k, raw in enumerate(entry["value"]):
                    item = stages.validate(raw, v["duration"])
                    if isinstance(item, Rejected):
                        self.summary.reject("check", item.code, cat)
                        continue
                    self.summary.keep("check", cat)
                    checked.setdefault(v["video"], []).append((f"{cat}/{k}", item))
        return checked

    async def _refine(self, checked: dict[str, list[tuple[str, dict]]]) -> None:
        budget = self.config.budget
        jobs = [
            (video, part, lambda item=item: units.refine(self.llm, item, budget))
            for video, items in checked.items() for part, item in items if units.needs_refine(item)
        ]
        await self._stage("refine", jobs)
        self._count("refine", jobs)

    def _finalize(self, videos: list[dict], checked: dict[str, list[tuple[str, dict]]]) -> list[dict]:
        rows = []
        base = self.config.dataset.parent.resolve()
        for v in videos:
            video_field = os.path.relpath(v["path"], base)
            for part, item in checked.get(v["video"], []):
                if self.config.refine and units.needs_refine(item):
                    entry = self.journal.get(v["video"], "refine", part)
                    if entry is None or not entry["ok"]:
                        continue  # failed (a resumed run retries it) or rejected (counted under refine)
                    item = stages.apply_refinement(item, entry["value"])
                final = stages.validate(item, v["duration"])
                if isinstance(final, Rejected):
                    self.summary.reject("validate", final.code, item["category"])
                    continue
                self.summary.keep("validate", final["category"])
                rows.append(stages.to_row(final, v, int(part.rsplit("/", 1)[1]), video_field))
        for row in rows:
            self.summary.keep("written", row["category"])
        return rows

    def _count(self, name: str, jobs: list[tuple[str, str, object]]) -> None:
        for video, part, _ in jobs:
            entry = self.journal.get(video, name, part)
            if entry is None:
                continue
            category = _category(name, part)
            if entry["ok"]:
                self.summary.keep(name, category)
            else:
                self.summary.reject(name, entry["code"], category)

    def _write(self, rows: list[dict]) -> None:
        write_outputs(self.config, rows, self.summary)


def write_outputs(cfg: ReasonConfig, rows: list[dict], summary: Summary) -> None:
    """The dataset jsonl (atomically) and the markdown summary."""
    tmp = cfg.dataset.with_name(f".{cfg.dataset.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, cfg.dataset)
    title = f"# Reasoning data: {cfg.videos} (shard {cfg.shard[0]}/{cfg.shard[1]})"
    failures = "\n".join(f"- {f}" for f in summary.failures[:20])
    text = f"{title}\n\n{summary.markdown()}\n"
    if failures:
        text += f"\n{summary.num_failed} failed (rerun with --resume to retry):\n{failures}\n"
    cfg.summary_path.parent.mkdir(parents=True, exist_ok=True)
    cfg.summary_path.write_text(text)


def _category(stage: str, part: str) -> str:
    if stage == "generate":
        return part
    if stage == "refine":
        return part.split("/", 1)[0]
    return "-"


async def run_reason(config: ReasonConfig, caption_client: Chat, llm_client: Chat) -> Summary:
    try:
        return await ReasonRun(config, caption_client, llm_client).run()
    finally:
        for client in {id(c): c for c in (caption_client, llm_client)}.values():
            await client.close()
