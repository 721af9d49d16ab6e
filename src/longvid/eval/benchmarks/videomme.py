"""Video-MME: the parquet users download (`videomme/test-00000-of-00001.parquet`).

Columns: `videoID` (the video file's stem), `duration` (short/medium/long), `domain`,
`sub_category`, `task_type`, `question_id`, `question`, `options` (["A. …", …]), `answer` (letter).

Official score (BradyFU/Video-MME `evaluation/eval_your_results.py`): strip the answer prefixes,
give up (empty) on a response of more than 10 words without a capital A-D, else take the first
capital A-D anywhere. Accuracy is correct / answered: an empty extraction leaves the denominator.
Reported per duration and overall. The official prefix list lacks two commas, so two of its
entries are fused strings ("The best option isThe correct option is", "Best answer:Best
option:"); we keep it as it runs, since that is what published numbers used.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...data.schema import Sample
from ...errors import DataError
from .base import Benchmark, Loaded, accuracy_table, find_video, text

DURATIONS = ("short", "medium", "long")
_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option is" "The correct option is",  # fused in the official list (no comma)
    "Best answer:" "Best option:",  # fused in the official list (no comma)
)
_OPTION = re.compile(r"([A-Z])\.\s*(.+)", re.DOTALL)
_LETTER = re.compile(r"[ABCD]")


def official_extract(response: str) -> str:
    """The official letter, or "" when the response gives none."""
    s = response.strip()
    for prefix in _PREFIXES:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not _LETTER.search(s):
        return ""
    match = _LETTER.search(s)
    return match.group() if match else ""


def _options(row: dict) -> tuple[str, ...]:
    value = row["options"]
    if hasattr(value, "tolist"):  # a numpy array from pandas-style readers
        value = value.tolist()
    if not isinstance(value, list) or len(value) != 4:
        raise ValueError(f"field 'options': expected 4 options \"A. …\" to \"D. …\", got {value!r}")
    texts = []
    for letter, option in zip("ABCD", value):
        m = _OPTION.fullmatch(option.strip()) if isinstance(option, str) else None
        if m is None or m.group(1) != letter or not m.group(2).strip():
            raise ValueError(f"field 'options': option {letter} must read \"{letter}. text\", got {option!r}")
        texts.append(m.group(2).strip())
    return tuple(texts)


def _sample(row: dict, videos: Path) -> Sample:
    duration = text(row, "duration")
    if duration not in DURATIONS:
        raise ValueError(f"field 'duration': {duration!r} is not one of {', '.join(DURATIONS)}")
    answer = text(row, "answer").strip()
    if answer not in "ABCD" or len(answer) != 1:
        raise ValueError(f"field 'answer': {answer!r} is not a letter A-D")
    extra = {k: row[k] for k in ("videoID", "domain", "sub_category", "task_type") if isinstance(row.get(k), str)}
    return Sample(
        id=str(text(row, "question_id")),
        video=find_video(row["videoID"], videos, "videoID"),
        question=text(row, "question"),
        answer=answer,
        category=duration,
        options=_options(row),
        extra={"benchmark": "videomme", **extra},
    )


def load(data: Path, videos: Path) -> Loaded:
    try:
        import pyarrow.parquet as pq  # the `bench` extra; only this loader needs it
    except ImportError as e:
        raise DataError(f"{data}: reading Video-MME's parquet needs pyarrow: pip install 'longvid[bench]'") from e

    files = sorted(data.glob("*.parquet")) if data.is_dir() else [data]
    if not files:
        raise DataError(f"{data}: no .parquet files")
    loaded = Loaded()
    for path in files:
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for a broken file
            raise DataError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from e
        for index, row in enumerate(rows, 1):
            loaded.add(path, index, lambda row=row: _sample(row, videos))
    return loaded


def official(samples: Sequence[Sample], responses: Sequence[str]) -> dict[str, Any]:
    groups: dict[str, dict[str, int]] = defaultdict(lambda: {"correct": 0, "answered": 0, "total": 0})
    for sample, response in zip(samples, responses, strict=True):
        group = groups[sample.category]
        group["total"] += 1
        letter = official_extract(response)
        if letter:
            group["answered"] += 1
            group["correct"] += letter == sample.answer
    table = {
        name: {**counts, "accuracy": counts["correct"] / counts["answered"] if counts["answered"] else 0.0}
        for name, counts in accuracy_table(groups).items()
    }
    correct = sum(g["correct"] for g in groups.values())
    answered = sum(g["answered"] for g in groups.values())
    return {
        "metric": "correct / answered (empty extractions leave the denominator), per duration",
        "overall": correct / answered if answered else 0.0,
        "correct": correct,
        "answered": answered,
        "total": len(samples),
        "groups": table,
    }


BENCHMARK = Benchmark("videomme", "Video-MME", load, official, group_by="duration")
