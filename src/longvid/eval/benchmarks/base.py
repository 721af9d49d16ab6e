"""What every benchmark shares: its rows as `Sample`s, rejected rows named, videos found safely,
and a run that reports the benchmark's official score beside ours.

A benchmark module supplies a `Benchmark`: `load(data, videos)` reads the file(s) as users
download them into `Sample`s (bad rows become `BadRow(file, row, "field 'x': why")`), and
`official(samples, responses)` scores raw responses with the benchmark's own extractor and metric.
Ours is always `answers.judge` through `eval.mcq.evaluate`, grouped by `Sample.category`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...config import VideoConfig
from ...data.dataset import BadRow, VideoDataset
from ...data.schema import Sample
from ...errors import DataError
from ...model.adapter import VLMAdapter
from ...model.compress import Compressor
from ..mcq import EvalResult, evaluate, markdown_table

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv")


@dataclass
class Loaded:
    """A benchmark file read: the good rows, the rejected ones, and where each good row came from."""

    samples: list[Sample] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    origins: list[tuple[str, int]] = field(default_factory=list)

    def add(self, file: Path, row: int, build: Callable[[], Sample]) -> None:
        """Keep `build()`'s sample, or record why the row was rejected (ValueError/TypeError/KeyError)."""
        try:
            sample = build()
        except KeyError as e:
            self.bad.append(BadRow(str(file), row, f"field {e.args[0]!r}: missing"))
            return
        except (ValueError, TypeError) as e:
            self.bad.append(BadRow(str(file), row, str(e)))
            return
        self.samples.append(sample)
        self.origins.append((str(file), row))

    def drop_duplicate_ids(self) -> None:
        seen: dict[str, tuple[str, int]] = {}
        keep = []
        for sample, origin in zip(self.samples, self.origins):
            if sample.id in seen:
                first = seen[sample.id]
                self.bad.append(BadRow(*origin, f"field 'id': duplicate id {sample.id!r} (first at {first[0]}:{first[1]})"))
                continue
            seen[sample.id] = origin
            keep.append((sample, origin))
        self.samples = [s for s, _ in keep]
        self.origins = [o for _, o in keep]


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    load: Callable[[Path, Path], Loaded]
    official: Callable[[Sequence[Sample], Sequence[str]], dict[str, Any]]
    group_by: str  # what `Sample.category` holds for this benchmark, for the report


def text(row: dict, key: str) -> str:
    """A required non-empty string field."""
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"field {key!r}: must be a non-empty string, got {value!r}")
    return value


def string_list(row: dict, key: str, *, min_len: int = 2, max_len: int = 26) -> list[str]:
    value = row[key]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"field {key!r}: must be a list of non-empty strings, got {value!r}")
    if not min_len <= len(value) <= max_len:
        raise ValueError(f"field {key!r}: has {len(value)} entries; expected {min_len} to {max_len}")
    return value


def find_video(name: object, root: Path, key: str, folders: Sequence[str] = ("",)) -> str:
    """The video `name` (a file name, or a stem whose container is mp4, webm or mkv) inside `root`,
    as a path relative to it; ValueError naming the field when it escapes `root` or is missing."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"field {key!r}: must be a non-empty string, got {name!r}")
    names = ([name] if Path(name).suffix else []) + [name + ext for ext in VIDEO_EXTENSIONS]
    real_root = root.resolve()
    tried = []
    for folder in folders:
        for candidate in names:
            relative = Path(folder) / candidate
            real = (root / relative).resolve()
            if not real.is_relative_to(real_root):
                raise ValueError(f"field {key!r}: path {name!r} escapes the videos folder {root}")
            if real.is_file():
                return relative.as_posix()
            tried.append(relative.as_posix())
    raise ValueError(f"field {key!r}: no video under {root} (tried {', '.join(tried)})")


def read_json_rows(path: Path, loaded: Loaded) -> Iterator[tuple[int, dict]]:
    """(1-based row, object) for a JSON array file or a jsonl file; unreadable rows go to `loaded.bad`."""
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from e
    try:
        rows = json.loads(content)
    except json.JSONDecodeError:
        rows = None  # maybe jsonl
    if rows is None:
        for line, raw in enumerate(content.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as e:
                loaded.bad.append(BadRow(str(path), line, f"invalid JSON ({e.msg} at column {e.colno})"))
                continue
            yield from _checked_row(path, line, row, loaded)
        return
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")
    for index, row in enumerate(rows, 1):
        yield from _checked_row(path, index, row, loaded)


def _checked_row(path: Path, row_number: int, row: object, loaded: Loaded) -> Iterator[tuple[int, dict]]:
    if isinstance(row, dict):
        yield row_number, row
    else:
        loaded.bad.append(BadRow(str(path), row_number, f"a row must be a JSON object, got {type(row).__name__}"))


def load_json_rows(data: Path, videos: Path, make_sample: Callable[[dict, Path], Sample]) -> Loaded:
    """The rows of one JSON file, each made a `Sample` by `make_sample(row, videos)` (bad rows counted)."""
    loaded = Loaded()
    for row_number, row in read_json_rows(data, loaded):
        loaded.add(data, row_number, lambda row=row: make_sample(row, videos))
    return loaded


def tally(samples: Sequence[Sample], responses: Sequence[str], correct: Callable[[Sample, str], bool]) -> dict[str, dict[str, int]]:
    """Correct and total answers per category, by the benchmark's own `correct(sample, response)`."""
    groups: dict[str, dict[str, int]] = {}
    for sample, response in zip(samples, responses, strict=True):
        group = groups.setdefault(sample.category, {"correct": 0, "total": 0})
        group["total"] += 1
        group["correct"] += bool(correct(sample, response))
    return groups


def accuracy_table(groups: dict[str, dict[str, float]]) -> dict[str, Any]:
    """{group: {"correct", "total"}} -> per-group accuracy and counts, in a stable order."""
    return {
        name: {**counts, "accuracy": counts["correct"] / counts["total"] if counts["total"] else math.nan}
        for name, counts in sorted(groups.items())
    }


# --- running -----------------------------------------------------------------------------------


@dataclass
class BenchmarkResult:
    benchmark: str
    official: dict[str, Any]
    ours: EvalResult
    bad: list[BadRow]
    num_rows: int

    def summary(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "num_rows": self.num_rows,
            "num_evaluated": len(self.ours.records),
            "num_bad": len(self.bad),
            "num_skipped_videos": len(self.ours.skipped),
            "official": self.official,
            "ours": self.ours.summary(),
            "bad": [asdict(b) for b in self.bad],
        }


def load_checked(bench: Benchmark, data: Path, videos: Path, *, skip_bad: bool) -> Loaded:
    """Load, and fail naming the bad rows unless `skip_bad` (then they are counted and reported)."""
    if not data.exists():
        raise DataError(f"{data}: benchmark file not found")
    if not videos.is_dir():
        raise DataError(f"{videos}: videos folder not found")
    loaded = bench.load(data, videos)
    loaded.drop_duplicate_ids()
    if loaded.bad:
        listed = "\n".join(f"  {b}" for b in loaded.bad[:10])
        more = f"\n  … and {len(loaded.bad) - 10} more" if len(loaded.bad) > 10 else ""
        message = f"{bench.title}: {len(loaded.bad)} bad row(s) of {len(loaded.bad) + len(loaded.samples)}:\n{listed}{more}"
        if not skip_bad:
            raise DataError(message + "\n(--skip-bad skips them, counted in the report)")
        log.warning("%s", message)
    if not loaded.samples:
        raise DataError(f"{bench.title}: no usable rows in {data}")
    return loaded


def run_benchmark(
    bench: Benchmark,
    adapter: VLMAdapter,
    loaded: Loaded,
    videos: Path,
    *,
    video: VideoConfig,
    max_new_tokens: int,
    limit: int | None = None,
    skip_bad: bool = False,
    compressor: Compressor | None = None,
    progress: bool = True,
) -> BenchmarkResult:
    """Answer every row of `loaded` (from `load_checked`) greedily once, its frames sampled as
    `video` says; score the responses officially and with `answers.judge`."""
    samples, origins = loaded.samples[:limit], loaded.origins[:limit]
    num_rows = len(loaded.samples) + len(loaded.bad)
    dataset = VideoDataset(samples, root=videos, origins=origins, video=video, skip_bad=skip_bad)
    dataset.validate_videos(progress=progress)  # unreadable videos: an error, or dropped and counted
    ours = evaluate(adapter, dataset.samples, dataset.load_frames, max_new_tokens=max_new_tokens, progress=progress,
                    desc=bench.name, skip_bad=skip_bad, compressor=compressor)
    ours.num_frames = video.num_frames
    by_id = {s.id: s for s in dataset.samples}
    answered = [by_id[r.id] for r in ours.records]  # rows whose video failed mid-run are in ours.skipped
    official = bench.official(answered, [r.response for r in ours.records])
    return BenchmarkResult(bench.name, official, ours, loaded.bad + dataset.bad, num_rows)


def markdown_report(bench: Benchmark, result: BenchmarkResult) -> str:
    official = result.official
    lines = [f"# {bench.title}", "", f"Official metric: {official['metric']}", ""]
    lines += [f"| {bench.group_by} | n | official |", "| --- | ---: | ---: |"]
    for name, group in official["groups"].items():
        lines.append(f"| {name} | {group['total']} | {100 * group['accuracy']:.1f} |")
    lines.append(f"| **overall** | {official['total']} | **{100 * official['overall']:.1f}** |")
    lines += ["", "Ours (`answers.judge`, every evaluated row counts):", "", markdown_table({"ours": result.ours}), ""]
    lines.append(
        f"Rows: {result.num_rows} read, {len(result.ours.records)} evaluated, {len(result.bad)} rejected"
        + (f", {len(result.ours.skipped)} skipped (video failed to decode)." if result.ours.skipped else ".")
    )
    for bad in result.bad[:20]:
        lines.append(f"- {bad}")
    for reason in result.ours.skipped[:20]:
        lines.append(f"- skipped: {reason}")
    if len(result.bad) > 20:
        lines.append(f"- … and {len(result.bad) - 20} more (all listed in the JSON)")
    return "\n".join(lines) + "\n"


def write_report(bench: Benchmark, result: BenchmarkResult, out_dir: Path) -> Path:
    """`{name}.json` (official and our scores, every record, every rejected row) and `{name}.md`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {**result.summary(), "records": [asdict(r) for r in result.ours.records]}
    path = out_dir / f"{bench.name}.json"
    path.write_text(json.dumps(payload, indent=2, allow_nan=True))
    (out_dir / f"{bench.name}.md").write_text(markdown_report(bench, result))
    return path
