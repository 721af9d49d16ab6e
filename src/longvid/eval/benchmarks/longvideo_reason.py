"""LongVideo-Reason-eval (LongVILA-R1): 1,000 reasoning questions over long videos.

Rows (JSON list or jsonl): `problem_id`, `problem` (the question with its options embedded as
lines "A. …"), `problem_type` (temporal, goal, plot, spatial), `videos` (a path, or a list of
one), `answer` = "<answer>B</answer>". The videos are mp4, webm and mkv.

Official score: strict string equality of the `<answer>…</answer>` span of the response and of
the gold answer (stripped), per problem type and overall. A response without the span is wrong.
Ours grades the same response with `answers.judge` (any clear letter or option text counts).
The public file has a few malformed rows (a gold answer outside the options, options missing);
they are rejected, named and counted, never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...answers import ANSWER_CLOSE, ANSWER_OPEN
from ...data.schema import Sample
from .base import Benchmark, Loaded, accuracy_table, find_video, load_json_rows, tally, text

PROBLEM_TYPES = ("temporal", "goal", "plot", "spatial")
_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])[.)]\s+(\S.*?)\s*$")


def answer_span(text_: str) -> str | None:
    """The stripped content of the first `<answer>…</answer>`, or None."""
    start = text_.find(ANSWER_OPEN)
    if start < 0:
        return None
    start += len(ANSWER_OPEN)
    end = text_.find(ANSWER_CLOSE, start)
    return None if end < 0 else text_[start:end].strip()


def split_problem(problem: str) -> tuple[str, tuple[str, ...]]:
    """(question stem, option texts) from a problem whose options are lines "A. …", "B. …", ….

    The options are the last run of consecutive letter lines starting at A (a letter line inside
    the question text cannot pose as an option unless the run continues to the end).
    """
    lines = problem.strip().splitlines()
    end = len(lines)
    while end and not lines[end - 1].strip():
        end -= 1
    start = end
    while start and _OPTION_LINE.match(lines[start - 1]):
        start -= 1
    matches = [_OPTION_LINE.match(line) for line in lines[start:end]]
    letters = "".join(m.group(1) for m in matches)
    # The run must read A, B, C, …; drop leading lines until it does.
    while letters and not "ABCDEFGHIJKLMNOPQRSTUVWXYZ".startswith(letters):
        start, matches, letters = start + 1, matches[1:], letters[1:]
    stem = "\n".join(lines[:start]).strip()
    if len(matches) < 2:
        raise ValueError("field 'problem': no options \"A. …\", \"B. …\" found at its end")
    if not stem:
        raise ValueError("field 'problem': no question before the options")
    return stem, tuple(m.group(2) for m in matches)


def _video(row: dict, videos: Path) -> str:
    value = row["videos"]
    if isinstance(value, list):
        if len(value) != 1:
            raise ValueError(f"field 'videos': expected one video, got {len(value)}")
        value = value[0]
    return find_video(value, videos, "videos")


def _sample(row: dict, videos: Path) -> Sample:
    problem_type = text(row, "problem_type")
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"field 'problem_type': {problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}")
    gold = answer_span(text(row, "answer"))
    if not gold:
        raise ValueError(f"field 'answer': expected \"<answer>X</answer>\", got {row['answer']!r}")
    stem, options = split_problem(text(row, "problem"))
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(options)]
    if gold not in letters:
        raise ValueError(f"field 'answer': {gold!r} is not one of the problem's option letters {', '.join(letters)}")
    problem_id = row["problem_id"]
    if isinstance(problem_id, bool) or not isinstance(problem_id, (str, int)) or str(problem_id).strip() == "":
        raise ValueError(f"field 'problem_id': must be a string or an integer, got {problem_id!r}")
    return Sample(
        id=str(problem_id),
        video=_video(row, videos),
        question=stem,
        answer=gold,
        category=problem_type,
        options=options,
        extra={"benchmark": "longvideo_reason", "gold": row["answer"]},
    )


def load(data: Path, videos: Path) -> Loaded:
    return load_json_rows(data, videos, _sample)


def official(samples: Sequence[Sample], responses: Sequence[str]) -> dict[str, Any]:
    groups = tally(samples, responses, lambda sample, response: answer_span(response) == answer_span(sample.extra["gold"]))
    correct = sum(g["correct"] for g in groups.values())
    return {
        "metric": "strict == of the <answer> span, per problem type",
        "overall": correct / len(samples) if samples else 0.0,
        "correct": correct,
        "total": len(samples),
        "groups": accuracy_table(groups),
    }


BENCHMARK = Benchmark("longvideo_reason", "LongVideo-Reason-eval", load, official, group_by="problem type")
