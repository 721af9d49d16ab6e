"""Write a synthetic dataset: a jsonl of `Sample` rows, with mp4 files or regenerating specs."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..video.decode import encode_mp4
from ..seeds import derived_seed
from .tasks import CATEGORIES, LETTERS, NOMINAL_FPS, TASKS, make_sample

log = logging.getLogger(__name__)


def _sample_seed(seed: int, index: int) -> int:
    # Hashed, 63-bit: datasets made with different seeds never share a sample.
    return derived_seed(seed, index) >> 1


def write_dataset(
    out_dir: str | os.PathLike,
    num_samples: int,
    *,
    num_frames: int,
    size: int = 56,
    seed: int = 0,
    tasks: Sequence[str] = CATEGORIES,
    as_files: bool = True,
    codec: str = "libx264",
    fps: float = NOMINAL_FPS,
    progress: bool = True,
    shuffle_options: bool = False,
    task_kwargs: Mapping[str, Mapping[str, object]] | None = None,
) -> Path:
    """Write `out_dir/data.jsonl` (and mp4s under `out_dir/videos/` when as_files); return the jsonl path.

    `task_kwargs` sets each task's difficulty knobs, e.g. `{"temporal": {"distractors": 0}}`.

    Tasks take turns and each task cycles through the answer letters A-D (exactly balanced when
    num_samples is a multiple of 4 * len(tasks)); the order is then shuffled. File rows keep their
    spec in a `synth` column.
    """
    if not tasks or any(t not in TASKS for t in tasks):
        raise ValueError(f"tasks must be a non-empty subset of {', '.join(TASKS)}, got {list(tasks)}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    out = Path(out_dir)
    (out / "videos" if as_files else out).mkdir(parents=True, exist_ok=True)
    plan = [(tasks[i % len(tasks)], LETTERS[(i // len(tasks)) % 4]) for i in range(num_samples)]
    order = np.random.default_rng(seed).permutation(num_samples)
    rows = []
    for i in tqdm(range(num_samples), desc=f"writing {out}", disable=not progress):
        task, letter = plan[order[i]]
        extra = dict((task_kwargs or {}).get(task, {}))
        sample, frames = make_sample(
            task, _sample_seed(seed, i), num_frames, size, shuffle_options=shuffle_options, answer=letter, **extra
        )
        if as_files:
            rel = f"videos/{sample.id}.mp4"
            encode_mp4(out / rel, frames, fps, codec)
            sample = replace(sample, video=rel, extra={"synth": sample.video})
        rows.append(json.dumps(sample.to_row()))
    path = out / "data.jsonl"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(rows) + "\n")
    os.replace(tmp, path)
    log.info("wrote %d samples (%s) to %s", num_samples, ", ".join(tasks), path)
    return path
