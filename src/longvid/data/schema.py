"""`Sample`: one dataset row, validated on construction."""

from __future__ import annotations

import json
import string
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CATEGORIES = ("temporal", "goal", "spatial", "plot", "needle")
OPTION_LETTERS = tuple(string.ascii_uppercase)


@dataclass(frozen=True)
class Sample:
    """One question about one video.

    `video` is a path relative to the dataset root (or absolute inside it). `options` holds the
    option texts in letter order (A, B, ...); it may be empty for open-ended answers, in which case
    `answer` is the free-form answer. With options, `answer` is the correct option's letter.
    """

    id: str
    video: str
    question: str
    answer: str
    category: str
    options: tuple[str, ...] = ()
    reasoning: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("id", "video", "question", "answer", "category"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"field '{name}' must be a non-empty string, got {value!r}")
        if not isinstance(self.options, tuple) or not all(isinstance(o, str) and o for o in self.options):
            raise ValueError(f"field 'options' must be a list of non-empty strings, got {self.options!r}")
        if len(self.options) > len(OPTION_LETTERS):
            raise ValueError(f"field 'options' has {len(self.options)} entries; at most {len(OPTION_LETTERS)}")
        if self.options and self.answer not in self.letters:
            raise ValueError(
                f"field 'answer' is {self.answer!r}, not one of the option letters {', '.join(self.letters)}"
            )
        if self.reasoning is not None and not isinstance(self.reasoning, str):
            raise ValueError(f"field 'reasoning' must be a string, got {type(self.reasoning).__name__}")

    @property
    def letters(self) -> tuple[str, ...]:
        return OPTION_LETTERS[: len(self.options)]

    @property
    def answer_text(self) -> str:
        """The correct option's text (or the free-form answer)."""
        if self.options:
            return self.options[self.letters.index(self.answer)]
        return self.answer

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["options"] = list(self.options)
        extra = row.pop("extra")
        if row["reasoning"] is None:
            del row["reasoning"]
        row.update(extra)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Sample":
        """Build from a json row; unknown columns go to `extra` (passed on to reward functions)."""
        if not isinstance(row, dict):
            raise ValueError(f"a row must be a JSON object, got {type(row).__name__}")
        known = {"id", "video", "question", "answer", "category", "options", "reasoning"}
        missing = [k for k in ("id", "video", "question", "answer", "category") if k not in row]
        if missing:
            raise ValueError(f"missing field(s): {', '.join(missing)}")
        options = row.get("options") or []
        if not isinstance(options, list):
            raise ValueError(f"field 'options' must be a list, got {type(options).__name__}")
        sample_id = row["id"]
        if isinstance(sample_id, int):
            sample_id = str(sample_id)
        return cls(
            id=sample_id,
            video=row["video"],
            question=row["question"],
            answer=row["answer"],
            category=row["category"],
            options=tuple(options),
            reasoning=row.get("reasoning"),
            extra={k: v for k, v in row.items() if k not in known},
        )


def write_jsonl(path: str | Path, samples: Iterable[Sample]) -> Path:
    """`samples` as a jsonl file, one `to_row()` per line."""
    path = Path(path)
    path.write_text("".join(json.dumps(s.to_row()) + "\n" for s in samples))
    return path
