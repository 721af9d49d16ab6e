"""MLVU (multi-task long video understanding): one JSON file per multiple-choice task.

`--data` is one task file or the folder of them (`json/1_plotQA.json`, `json/2_needle.json`, …;
the task is the file stem without its number). Rows: `video` (file name), `question`,
`candidates` (option texts), `answer` (the correct candidate's TEXT, not a letter). Videos are
looked up in `--videos/<file stem>/`, `--videos/<task>/`, then `--videos/` itself (the download
keeps `video/1_plotQA/…`).

Official score (JUNJIE99/MLVU `choice_bench.py`, `check_ans`): the model's answer is primed with
"Best option:(", and the text before its first ")" must equal the gold letter. Our prompt does not
prime it, so a leading "(" the model writes itself is dropped first (it is the one the prime
would have supplied); anything else ("The answer is B") does not count. M-Avg = the mean of the
per-task accuracies. In a folder, a task file none of whose rows has `candidates` (MLVU's
open-ended sub-scene and summary tasks) is skipped with a warning: M-Avg does not include it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...data.schema import OPTION_LETTERS, Sample
from ...errors import DataError
from .base import Benchmark, Loaded, accuracy_table, find_video, read_json_rows, string_list, tally, text

log = logging.getLogger(__name__)

_NUMBERED = re.compile(r"^\d+_")


def official_extract(response: str) -> str:
    s = response.strip().removeprefix("(")
    return s[: s.index(")")] if ")" in s else s


def task_name(path: Path) -> str:
    return _NUMBERED.sub("", path.stem)


def _sample(row: dict, videos: Path, path: Path, row_number: int) -> Sample:
    task = task_name(path)
    candidates = string_list(row, "candidates")
    answer = text(row, "answer")
    matches = [i for i, c in enumerate(candidates) if c == answer]
    if len(matches) != 1:
        found = "is not among" if not matches else f"appears {len(matches)} times in"
        raise ValueError(f"field 'answer': {answer!r} {found} the candidates")
    return Sample(
        id=f"{task}-{row_number}",
        video=find_video(row["video"], videos, "video", folders=(path.stem, task, "")),
        question=text(row, "question"),
        answer=OPTION_LETTERS[matches[0]],
        category=task,
        options=tuple(candidates),
        extra={"benchmark": "mlvu"},
    )


def load(data: Path, videos: Path) -> Loaded:
    files = sorted(data.glob("*.json")) if data.is_dir() else [data]
    if not files:
        raise DataError(f"{data}: no task .json files")
    loaded = Loaded()
    for path in files:
        rows = list(read_json_rows(path, loaded))
        if data.is_dir() and rows and not any("candidates" in row for _, row in rows):
            # MLVU's open-ended tasks (sub-scene captioning, summary) share the folder; M-Avg leaves them out.
            log.warning("%s: no row has 'candidates' (an open-ended task); not part of M-Avg, skipped", path)
            continue
        for row_number, row in rows:
            loaded.add(path, row_number, lambda row=row, path=path, n=row_number: _sample(row, videos, path, n))
    return loaded


def official(samples: Sequence[Sample], responses: Sequence[str]) -> dict[str, Any]:
    groups = tally(samples, responses, lambda sample, response: official_extract(response) == sample.answer)
    table = accuracy_table(groups)
    return {
        "metric": "M-Avg: mean of per-task accuracies (text before the first ')' equals the gold letter)",
        "overall": sum(g["accuracy"] for g in table.values()) / len(table) if table else 0.0,
        "total": len(samples),
        "groups": table,
    }


BENCHMARK = Benchmark("mlvu", "MLVU", load, official, group_by="task")
