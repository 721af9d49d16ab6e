"""Difficulty filtering (LongVILA-R1): answer each question N times with the current model.

Always right → easy, always wrong → hard, mixed → medium. CoT-SFT uses easy + hard; RL uses medium,
because a group whose answers are all right or all wrong has zero advantage and gives no gradient.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, TypeVar

import torch
from tqdm.auto import tqdm

from ...answers import judge
from ...model.adapter import VLMAdapter
from ...model.sampling import SamplingConfig
from ...respond import respond_samples
from ...seeds import derived_seed
from ..dataset import VideoDataset
from ..schema import CATEGORIES, write_jsonl

log = logging.getLogger(__name__)

Difficulty = Literal["easy", "medium", "hard"]
DIFFICULTIES: tuple[Difficulty, ...] = ("easy", "medium", "hard")
SPLIT_OF: dict[str, str] = {"easy": "sft", "hard": "sft", "medium": "rl"}
FILTER_BATCH = 8  # questions decoded together (x N answers each): one decoding loop of 8N rows
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


@torch.no_grad()
def answer_many(
    adapter: VLMAdapter,
    dataset: VideoDataset,
    num_answers: int,
    config: SamplingConfig,
    *,
    seed: int = 0,
    progress: bool = True,
    batch_size: int = FILTER_BATCH,
) -> list[list[bool]]:
    """`[question][attempt]` correctness: each video encoded and prefilled once, N answers sampled,
    `batch_size` questions decoded together. Question i draws from its own stream, seeded by
    (seed, i), so the answers do not depend on the batch size."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    adapter.model.eval()
    samples = dataset.samples
    correct = []
    bar = tqdm(total=len(samples), desc="answering", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        generators = [torch.Generator().manual_seed(derived_seed(seed, start + i)) for i in range(len(batch))]
        texts = respond_samples(adapter, batch, [dataset.load_frames(s) for s in batch], num_answers, config, generators=generators)
        correct += [[judge(t, s.answer, s.options).correct for t in answers] for s, answers in zip(batch, texts)]
        bar.update(len(batch))
    bar.close()
    return correct


def write_splits(dataset: VideoDataset, correct: list[list[bool]], source: str | Path) -> dict[str, Path]:
    """Beside the source jsonl (so video paths stay valid): `<stem>.{easy,medium,hard,sft,rl}.jsonl`,
    `<stem>.difficulty.md`, and `<stem>.difficulty.json` with every question's correctness."""
    source = Path(source)
    labels = label_difficulty(correct)
    groups = {name: [s for s, lab in zip(dataset.samples, labels) if lab == name] for name in ("easy", "medium", "hard")}
    groups.update(split_by_difficulty(dataset.samples, labels))
    paths = {}
    for name, rows in groups.items():
        path = source.with_name(f"{source.stem}.{name}.jsonl")
        write_jsonl(path, rows)
        paths[name] = path
    table = summary_table(labels, [s.category for s in dataset.samples])
    paths["summary"] = source.with_name(f"{source.stem}.difficulty.md")
    paths["summary"].write_text(f"# Difficulty of {source.name}\n\n{table}\n")
    details = [{"id": s.id, "difficulty": lab, "correct": c} for s, lab, c in zip(dataset.samples, labels, correct)]
    paths["details"] = source.with_name(f"{source.stem}.difficulty.json")
    paths["details"].write_text(json.dumps(details, indent=1))
    return paths
