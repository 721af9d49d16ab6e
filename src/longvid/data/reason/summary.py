"""Kept / rejected / failed counts per stage and category, as a markdown table."""

from __future__ import annotations

from collections import Counter, defaultdict

STAGE_ORDER = ("segment", "caption", "merge", "generate", "check", "refine", "validate", "written")


class Summary:
    def __init__(self) -> None:
        self.kept: Counter = Counter()
        self.rejected: dict[tuple[str, str], Counter] = defaultdict(Counter)
        self.failed: Counter = Counter()
        self.failures: list[str] = []

    def keep(self, stage: str, category: str = "-", n: int = 1) -> None:
        self.kept[stage, category] += n

    def reject(self, stage: str, code: str, category: str = "-") -> None:
        self.rejected[stage, category][code] += 1

    def fail(self, stage: str, message: str, category: str = "-") -> None:
        self.failed[stage, category] += 1
        self.failures.append(f"{stage}: {message}")

    def to_json(self) -> dict:
        return {
            "kept": [[s, c, n] for (s, c), n in self.kept.items()],
            "rejected": [[s, c, code, n] for (s, c), codes in self.rejected.items() for code, n in codes.items()],
            "failed": [[s, c, n] for (s, c), n in self.failed.items()],
            "failures": self.failures,
        }

    def merge(self, data: dict) -> None:
        """Add the counts of another summary's `to_json()` (e.g. from a Ray worker)."""
        for s, c, n in data["kept"]:
            self.kept[s, c] += n
        for s, c, code, n in data["rejected"]:
            self.rejected[s, c][code] += n
        for s, c, n in data["failed"]:
            self.failed[s, c] += n
        self.failures += data["failures"]

    @property
    def num_failed(self) -> int:
        return sum(self.failed.values())

    def rows(self) -> list[tuple[str, str, int, int, int, str]]:
        keys = set(self.kept) | set(self.rejected) | set(self.failed)
        order = {s: i for i, s in enumerate(STAGE_ORDER)}
        out = []
        for stage, category in sorted(keys, key=lambda k: (order.get(k[0], 99), k[1])):
            reasons = self.rejected.get((stage, category), Counter())
            text = ", ".join(f"{code} x{n}" for code, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
            out.append((stage, category, self.kept[stage, category], sum(reasons.values()),
                        self.failed[stage, category], text))
        return out

    def markdown(self) -> str:
        lines = ["| stage | category | kept | rejected | failed | rejection reasons |", "| --- | --- | ---: | ---: | ---: | --- |"]
        lines += [f"| {s} | {c} | {k} | {r} | {f} | {why} |" for s, c, k, r, f, why in self.rows()]
        return "\n".join(lines)
