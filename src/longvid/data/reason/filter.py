"""Difficulty filtering (LongVILA-R1): answer each question N times with the current model.

Always right → easy, always wrong → hard, mixed → medium. CoT-SFT uses easy + hard; RL uses medium,
because a group whose answers are all right or all wrong has zero advantage and gives no gradient.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ...eval.mcq import predicted_answer, respond
from ...model.adapter import VLMAdapter
from ...model.sampling import SamplingConfig
from ...rl.difficulty import label_difficulty, split_by_difficulty, summary_table
from ..dataset import VideoDataset

log = logging.getLogger(__name__)


@torch.no_grad()
def answer_many(
    adapter: VLMAdapter,
    dataset: VideoDataset,
    num_answers: int,
    config: SamplingConfig,
    *,
    seed: int = 0,
    progress: bool = True,
) -> list[list[bool]]:
    """`[question][attempt]` correctness: each video encoded and prefilled once, N answers sampled."""
    adapter.model.eval()
    generator = torch.Generator().manual_seed(seed)
    correct = []
    for s in tqdm(dataset.samples, desc="answering", disable=not progress, dynamic_ncols=True):
        texts = respond(adapter, s, dataset.load_frames(s), num_answers, config, generator=generator)
        correct.append([predicted_answer(s, t) == s.answer for t in texts])
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
        path.write_text("".join(json.dumps(s.to_row()) + "\n" for s in rows))
        paths[name] = path
    table = summary_table(labels, [s.category for s in dataset.samples])
    paths["summary"] = source.with_name(f"{source.stem}.difficulty.md")
    paths["summary"].write_text(f"# Difficulty of {source.name}\n\n{table}\n")
    details = [{"id": s.id, "difficulty": lab, "correct": c} for s, lab, c in zip(dataset.samples, labels, correct)]
    paths["details"] = source.with_name(f"{source.stem}.difficulty.json")
    paths["details"].write_text(json.dumps(details, indent=1))
    return paths
