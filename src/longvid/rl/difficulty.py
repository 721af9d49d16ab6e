"""Difficulty labels for `longvid data filter`, and DAPO's online group filter.

LongVILA-R1 answers each question several times (10) with the model: always right is "easy",
always wrong is "hard", mixed is "medium". CoT-SFT trains on easy + hard; RL trains on medium,
because a group whose rewards are all equal has zero advantage and gives no gradient. DAPO applies
the same idea online: drop a group whose mean reward is not strictly inside (low, high).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Literal, TypeVar

import torch

from longvid.data.schema import CATEGORIES

Difficulty = Literal["easy", "medium", "hard"]
DIFFICULTIES: tuple[Difficulty, ...] = ("easy", "medium", "hard")
SPLIT_OF: dict[str, str] = {"easy": "sft", "hard": "sft", "medium": "rl"}
T = TypeVar("T")


def _label(row: Sequence[object], index: int) -> Difficulty:
    if len(row) == 0:
        raise ValueError(f"question {index} has no answers to judge")
    if any(v not in (0, 1) for v in row):  # True == 1 and False == 0, so bools pass
        raise ValueError(f"question {index}: correctness must be booleans (or 0/1), got {list(row)!r}")
    right = sum(bool(v) for v in row)
    return "easy" if right == len(row) else "hard" if right == 0 else "medium"


def label_difficulty(correct: Sequence[Sequence[bool]] | torch.Tensor) -> list[Difficulty]:
    """One label per question from its answers' correctness, `[Q][N]` lists or a `[Q, N]` tensor."""
    if isinstance(correct, torch.Tensor):
        if correct.dim() != 2:
            raise ValueError(f"correctness tensor must be [Q, N], got shape {tuple(correct.shape)}")
        correct = correct.tolist()
    return [_label(row, i) for i, row in enumerate(correct)]


def split_by_difficulty(samples: Sequence[T], labels: Sequence[str]) -> dict[str, list[T]]:
    """{"sft": easy + hard samples, "rl": medium samples}, each in the input order."""
    if len(samples) != len(labels):
        raise ValueError(f"{len(samples)} samples but {len(labels)} labels")
    splits: dict[str, list[T]] = {"sft": [], "rl": []}
    for i, (sample, label) in enumerate(zip(samples, labels)):
        if label not in SPLIT_OF:
            raise ValueError(f"label {i} is {label!r}, not one of {', '.join(DIFFICULTIES)}")
        splits[SPLIT_OF[label]].append(sample)
    return splits


def summary_table(labels: Sequence[str], categories: Sequence[str]) -> str:
    """Markdown table of counts per category (rows) and difficulty (columns), with totals."""
    if len(labels) != len(categories):
        raise ValueError(f"{len(labels)} labels but {len(categories)} categories")
    bad = [i for i, label in enumerate(labels) if label not in DIFFICULTIES]
    if bad:
        raise ValueError(f"label {bad[0]} is {labels[bad[0]]!r}, not one of {', '.join(DIFFICULTIES)}")
    counts = Counter(zip(categories, labels))
    present = set(categories)
    # Known categories in their canonical order, then any others alphabetically.
    order = [c for c in CATEGORIES if c in present] + sorted(present - set(CATEGORIES))
    rows = [(c, [counts[(c, d)] for d in DIFFICULTIES]) for c in order]
    rows.append(("all", [sum(cells[j] for _, cells in rows) for j in range(len(DIFFICULTIES))]))
    lines = ["| category | easy | medium | hard | total |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, cells in rows:
        lines.append(f"| {name} | " + " | ".join(map(str, cells)) + f" | {sum(cells)} |")
    return "\n".join(lines)


def keep_group(mean_reward: float, low: float = 0.01, high: float = 0.99) -> bool:
    """DAPO's dynamic sampling: keep a group only if low < mean reward < high (NaN: drop)."""
    return bool(low < mean_reward < high)


def filter_groups(
    rewards: torch.Tensor, low: float = 0.01, high: float = 0.99, group_size: int | None = None
) -> torch.Tensor:
    """Boolean mask `[B]` of the groups to keep, from rewards `[B, G]` (or `[B*G]` with group_size).

    The test is on the mean reward, as DAPO's on accuracy; with weighted rewards (0.9 accuracy +
    0.1 format) a group can be all wrong yet vary in format: it is kept, and it does have a gradient.
    """
    if rewards.dim() == 1:
        if group_size is None or rewards.numel() % group_size:
            raise ValueError(f"flat rewards of {rewards.numel()} need a group_size that divides them")
        rewards = rewards.reshape(-1, group_size)
    elif rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, G] or [B*G], got shape {tuple(rewards.shape)}")
    mean = rewards.float().mean(dim=1)
    return (mean > low) & (mean < high)
