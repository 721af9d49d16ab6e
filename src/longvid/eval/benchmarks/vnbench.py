"""VNBench (video needle in a haystack): `VNBench-main-4try.json`.

Rows: `video`, `question`, `options` (option texts), `gt_option` (the letter, or its index),
`type` (e.g. `ret_insert1`, `ord_edit2`, `cnt_…`), `try` (0-3: the same question with its options
permuted). A question is the rows sharing video, type and question text.

Official score (joez17/VideoNIAH `evaluation/eval.py`): the answer is the text before its first
".", then the first of A, B, C, D (in that order) contained in it; a question counts only if all
4 tries are right; accuracy per type, overall = the mean over types. A question with fewer than 4
tries in the file can never count (as in the official script); their number is reported.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...answers import judge
from ...data.schema import OPTION_LETTERS, Sample
from .base import Benchmark, Loaded, accuracy_table, find_video, load_json_rows, string_list, text

TRIES = 4


def official_extract(response: str) -> str:
    pred = response.split(".")[0]
    return next((letter for letter in "ABCD" if letter in pred), pred)


def question_key(video: str, kind: str, question: str) -> str:
    return hashlib.blake2b(f"{video}\0{kind}\0{question}".encode(), digest_size=6).hexdigest()


def _gold(row: dict, num_options: int) -> str:
    gold = row["gt_option"]
    letters = OPTION_LETTERS[:num_options]
    if isinstance(gold, int) and not isinstance(gold, bool) and 0 <= gold < num_options:
        return letters[gold]
    if isinstance(gold, str) and gold.strip() in letters:
        return gold.strip()
    raise ValueError(f"field 'gt_option': {gold!r} is not one of {', '.join(letters)} (or their index)")


def _sample(row: dict, videos: Path) -> Sample:
    options = string_list(row, "options")
    attempt = row["try"]
    if isinstance(attempt, bool) or not isinstance(attempt, int) or not 0 <= attempt < TRIES:
        raise ValueError(f"field 'try': must be 0..{TRIES - 1}, got {attempt!r}")
    kind, question, video = text(row, "type"), text(row, "question"), text(row, "video")
    key = question_key(video, kind, question)
    return Sample(
        id=f"{kind}-{key}-try{attempt}",
        video=find_video(video, videos, "video"),
        question=question,
        answer=_gold(row, len(options)),
        category=kind,
        options=tuple(options),
        extra={"benchmark": "vnbench", "question_key": key, "try": attempt},
    )


def load(data: Path, videos: Path) -> Loaded:
    return load_json_rows(data, videos, _sample)


def all_tries_score(samples: Sequence[Sample], correct: Sequence[bool]) -> dict[str, Any]:
    """Questions right on all 4 tries, per type; overall = the mean over types."""
    right: dict[tuple[str, str], int] = defaultdict(int)
    for sample, ok in zip(samples, correct, strict=True):
        right[(sample.category, sample.extra["question_key"])] += bool(ok)
    groups: dict[str, dict[str, int]] = defaultdict(lambda: {"correct": 0, "total": 0, "incomplete": 0})
    tries: dict[tuple[str, str], int] = defaultdict(int)
    for sample in samples:
        tries[(sample.category, sample.extra["question_key"])] += 1
    for (kind, key), count in right.items():
        group = groups[kind]
        group["total"] += 1
        group["correct"] += count == TRIES
        group["incomplete"] += tries[(kind, key)] < TRIES
    table = accuracy_table(groups)
    return {
        "overall": sum(g["accuracy"] for g in table.values()) / len(table) if table else 0.0,
        "total": sum(g["total"] for g in table.values()),
        "incomplete": sum(g["incomplete"] for g in table.values()),
        "groups": table,
    }


def official(samples: Sequence[Sample], responses: Sequence[str]) -> dict[str, Any]:
    score = all_tries_score(samples, [official_extract(r) == s.answer for s, r in zip(samples, responses, strict=True)])
    ours = all_tries_score(samples, [judge(r, s.answer, s.options).correct for s, r in zip(samples, responses, strict=True)])
    return {
        "metric": "questions right on all 4 tries, per type; overall = mean over types",
        **score,
        "ours_all_tries": {"overall": ours["overall"], "groups": {k: v["accuracy"] for k, v in ours["groups"].items()}},
    }


BENCHMARK = Benchmark("vnbench", "VNBench", load, official, group_by="type")
