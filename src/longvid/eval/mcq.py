"""Evaluation of `Sample`s: greedy generation graded by `answers.judge`, accuracy by category."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..answers import judge
from ..data.schema import Sample
from ..errors import VideoError
from ..model.adapter import VLMAdapter
from ..model.compress import Compressor
from ..model.sampling import SamplingConfig
from ..respond import respond_samples
from ..video.decode import Frames

log = logging.getLogger(__name__)

# Questions decoded together: on CPU a decoding step of the tiny model costs about the same for 1
# or 16 rows, so batching divides evaluation time; greedy answers match one-at-a-time decoding.
EVAL_BATCH = 16


@dataclass
class Record:
    id: str
    category: str
    answer: str
    predicted: str | float | None
    correct: bool
    response: str


@dataclass
class EvalResult:
    records: list[Record]
    accuracy: float
    chance: float
    per_category: dict[str, dict[str, float]] = field(default_factory=dict)
    num_frames: int | None = None
    skipped: list[str] = field(default_factory=list)  # unreadable videos skipped with skip_bad, file:line: why

    def summary(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "chance": self.chance,
            "num_samples": len(self.records),
            "num_frames": self.num_frames,
            "per_category": self.per_category,
            "skipped": self.skipped,
        }


@torch.no_grad()
def evaluate(
    adapter: VLMAdapter,
    samples: list[Sample],
    load_frames: Callable[[Sample], Frames],
    *,
    max_new_tokens: int = 64,
    encode_chunk: int | None = None,
    progress: bool = True,
    desc: str = "eval",
    skip_bad: bool = False,
    compressor: Compressor | None = None,
    batch_size: int = EVAL_BATCH,
) -> EvalResult:
    """Greedy-answer every sample, `batch_size` questions decoded together, and score the extracted
    letter against the answer. With skip_bad, a video that fails to load is skipped and listed in
    `skipped`; the rest is scored."""
    if not samples:
        raise ValueError("nothing to evaluate: the evaluation set is empty")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    adapter.model.eval()
    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0)
    records, skipped = [], []
    bar = tqdm(total=len(samples), desc=desc, disable=not progress, dynamic_ncols=True)
    for start in range(0, len(samples), batch_size):
        loaded = []
        for s in samples[start : start + batch_size]:
            try:
                loaded.append((s, load_frames(s)))
            except VideoError as e:
                if not skip_bad:
                    raise
                log.warning("skipping an unreadable video: %s", e)
                skipped.append(str(e))
        if loaded:
            batch, frames = zip(*loaded)
            texts = respond_samples(adapter, batch, frames, 1, config, encode_chunk=encode_chunk, compressor=compressor)
            for s, (text,) in zip(batch, texts):
                verdict = judge(text, s.answer, s.options)
                records.append(Record(s.id, s.category, s.answer, verdict.predicted, verdict.correct, text))
        bar.update(min(batch_size, len(samples) - start))
    bar.close()
    if not records:
        raise VideoError(f"no video could be loaded ({len(skipped)} skipped); first: {skipped[0]}")
    result = score(records, samples)
    result.skipped = skipped
    return result


def score(records: list[Record], samples: list[Sample]) -> EvalResult:
    by_cat: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_cat[r.category].append(r)
    chance_of = {s.id: (1 / len(s.options) if s.options else 0.0) for s in samples}
    per_category = {
        cat: {
            "accuracy": sum(r.correct for r in rs) / len(rs),
            "chance": sum(chance_of[r.id] for r in rs) / len(rs),
            "count": len(rs),
        }
        for cat, rs in sorted(by_cat.items())
    }
    return EvalResult(
        records=records,
        accuracy=sum(r.correct for r in records) / len(records),
        chance=sum(chance_of[r.id] for r in records) / len(records),
        per_category=per_category,
    )


def markdown_table(results: dict[str, EvalResult]) -> str:
    """One column per named result (e.g. "after SFT", "after GRPO"), one row per category."""
    names = list(results)
    cats = sorted({c for r in results.values() for c in r.per_category})
    first = results[names[0]]
    lines = [
        "| category | n | chance | " + " | ".join(names) + " |",
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in names) + " |",
    ]
    for cat in cats:
        row = first.per_category.get(cat, {"count": 0, "chance": 0.0})
        accs = " | ".join(f"{100 * r.per_category.get(cat, {}).get('accuracy', float('nan')):.1f}" for r in results.values())
        lines.append(f"| {cat} | {row['count']} | {100 * row['chance']:.1f} | {accs} |")
    accs = " | ".join(f"**{100 * r.accuracy:.1f}**" for r in results.values())
    lines.append(f"| **overall** | {len(first.records)} | {100 * first.chance:.1f} | {accs} |")
    return "\n".join(lines)


def write_result(result: EvalResult, out_dir: str | Path, name: str = "eval") -> Path:
    """`{name}.json` (summary and every record) and `{name}.md` (the table)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {**result.summary(), "records": [asdict(r) for r in result.records]}
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (out_dir / f"{name}.md").write_text(markdown_table({name: result}) + "\n")
    return out_dir / f"{name}.json"


def frames_scaling(
    adapter: VLMAdapter,
    samples: list[Sample],
    loader_for: Callable[[int], Callable[[Sample], Frames]],
    frame_counts: list[int],
    **kwargs,
) -> list[EvalResult]:
    """Accuracy at each frame count (16, 32, 64, …): `loader_for(n)` samples n frames per video."""
    results = []
    for n in frame_counts:
        result = evaluate(adapter, samples, loader_for(n), desc=f"eval@{n}f", **kwargs)
        result.num_frames = n
        log.info("frames %d: accuracy %.3f (chance %.3f)", n, result.accuracy, result.chance)
        results.append(result)
    return results
