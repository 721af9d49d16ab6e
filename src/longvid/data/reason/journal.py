"""An append-only, fsync'd jsonl journal of finished work keyed by (video, stage, part).

Every finished unit of work (a segmented video, a clip's caption, a category's items, an item's
refinement) is one line, written and fsync'd before the next stage may use it, so a killed run
resumes from the journal without redoing or duplicating anything. Rejections are recorded too
(the decision is final; rerunning would only spend the same request again). Failures that may be
transient (a server down after all retries) are not recorded, so a resumed run tries them again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ...errors import DataError

log = logging.getLogger(__name__)

Key = tuple[str, str, str]


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: dict[Key, dict] = {}
        if self.path.exists():
            self._load()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab")

    def _load(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            # A run killed mid-write leaves a torn last line: drop it (its work is redone).
            keep = data.rfind(b"\n") + 1
            log.warning("%s: dropping a torn last entry of %d bytes", self.path, len(data) - keep)
            with self.path.open("r+b") as fh:
                fh.truncate(keep)
            data = data[:keep]
        for line, raw in enumerate(data.splitlines(), 1):
            try:
                entry = json.loads(raw)
                key = (entry["video"], entry["stage"], entry["part"])
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"{self.path}:{line}: not a journal entry ({e})") from None
            if key in self.entries:
                raise DataError(f"{self.path}:{line}: duplicate entry for {key}")
            self.entries[key] = entry

    def get(self, video: str, stage: str, part: str = "") -> dict | None:
        return self.entries.get((video, stage, part))

    def record(self, video: str, stage: str, part: str, *, value: Any = None, rejected: str | None = None,
               code: str | None = None) -> dict:
        """Append one finished unit: its output `value`, or the rejection (`code`, `rejected` detail)."""
        key = (video, stage, part)
        if key in self.entries:
            raise ValueError(f"journal already holds {key}")
        entry = {"video": video, "stage": stage, "part": part, "ok": rejected is None and code is None}
        if entry["ok"]:
            entry["value"] = value
        else:
            entry["code"], entry["reason"] = code or rejected, rejected or code
        self._file.write(json.dumps(entry).encode() + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.entries[key] = entry
        return entry

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
