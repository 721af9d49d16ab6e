"""LongVideoBench: `lvb_val.json` as downloaded.

Rows: `id`, `video_path` (relative to the videos folder), `duration_group` (15, 60, 600, 3600
seconds), `question_category`, `question`, `candidates` (2 to 5 option texts), `correct_choice`
(the index of the right one).

Official score (the LongVideoBench authors' parser as lmms-eval ships it): strip the answer
prefixes, take the first capital A-E; when there is none (or more than 10 words without one) a
RANDOM option is assigned. We seed that draw with the row id, so a rerun scores the same and
anyone can reproduce it; accuracy over all rows, per duration group and overall.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...data.schema import OPTION_LETTERS, Sample
from .base import Benchmark, Loaded, accuracy_table, find_video, load_json_rows, string_list, tally, text

_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option is",
    "The correct option is",
    "Best answer:",
    "Best option:",
)
_LETTER = re.compile(r"[ABCDE]")


def official_extract(response: str, sample: Sample) -> str:
    """The official letter; a seeded random option of the sample when nothing parses."""
    s = response.strip()
    for prefix in _PREFIXES:
        s = s.replace(prefix, "")
    match = _LETTER.search(s)
    if match is None:  # also covers "more than 10 words and no letter"
        return random.Random(f"longvideobench:{sample.id}").choice(sample.letters)
    return match.group()


def _sample(row: dict, videos: Path) -> Sample:
    candidates = string_list(row, "candidates", max_len=5)
    choice = row["correct_choice"]
    if isinstance(choice, bool) or not isinstance(choice, int) or not 0 <= choice < len(candidates):
        raise ValueError(f"field 'correct_choice': must be an index 0..{len(candidates) - 1}, got {choice!r}")
    group = row["duration_group"]
    if isinstance(group, bool) or not isinstance(group, (int, str)):
        raise ValueError(f"field 'duration_group': must be a number of seconds, got {group!r}")
    return Sample(
        id=str(text(row, "id")),
        video=find_video(row["video_path"], videos, "video_path"),
        question=text(row, "question"),
        answer=OPTION_LETTERS[choice],
        category=str(group),
        options=tuple(candidates),
        extra={"benchmark": "longvideobench", "question_category": row.get("question_category")},
    )


def load(data: Path, videos: Path) -> Loaded:
    return load_json_rows(data, videos, _sample)


def official(samples: Sequence[Sample], responses: Sequence[str]) -> dict[str, Any]:
    groups = tally(samples, responses, lambda sample, response: official_extract(response, sample) == sample.answer)
    correct = sum(g["correct"] for g in groups.values())
    # Duration groups are seconds: 15 before 600, not after it.
    table = dict(sorted(accuracy_table(groups).items(), key=lambda kv: (not kv[0].isdigit(), kv[0].zfill(12))))
    return {
        "metric": "accuracy (unparsed answers get a random option, seeded by row id), per duration group",
        "overall": correct / len(samples) if samples else 0.0,
        "correct": correct,
        "total": len(samples),
        "groups": table,
    }


BENCHMARK = Benchmark("longvideobench", "LongVideoBench", load, official, group_by="duration group")
