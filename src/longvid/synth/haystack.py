"""The synthetic haystack for needle-in-a-haystack (`eval.niah`): grey frames (each quadrant its own
grey per frame pair) hiding a coloured flash at the asked depth, as a `(num_frames, depth, trial)
-> (Sample, Frames)` maker, and the training rows that teach a model to find it."""

from __future__ import annotations

import dataclasses
import random
import zlib
from collections.abc import Sequence

import numpy as np

from ..data.schema import Sample
from ..errors import ConfigError
from ..video.decode import Frames
from .tasks import LETTERS, NOMINAL_FPS, make_sample

# Training rows draw their seeds from here up: never one an evaluation cell uses (below 2**60).
TRAIN_SEED_BASE = 1 << 60


def _eval_seed(seed: int, num_frames: int, depth: float, trial: int) -> int:
    cell = zlib.crc32(f"{num_frames}:{depth:.6f}".encode())
    return ((seed << 32) + cell) * 4096 + trial


def needle_haystack(size: int = 56, seed: int = 0, length: int = 2):
    """A maker of synthetic needle items: trial t of a cell is seeded by (seed, cell, t), so every
    cell draws its own haystacks, and its answer is letter t mod 4, so with trials a multiple of 4
    a model that ignores the video scores exactly chance in every cell. The flash lasts `length`
    frames (whole frame pairs, at least one)."""
    if not 0 <= seed < 1 << 12:
        raise ConfigError(f"needle haystack seed (--seed) must be in 0..4095, got {seed}")

    def make(num_frames: int, depth: float, trial: int):
        if not 0 <= trial < 4096:
            raise ConfigError(f"needle trial must be in 0..4095 (--trials at most 4096), got {trial}")
        letter = LETTERS[trial % len(LETTERS)]
        sample, pixels = make_sample("needle", _eval_seed(seed, num_frames, depth, trial), num_frames, size,
                                     depth=depth, answer=letter, length=length)
        return sample, Frames(pixels, np.arange(num_frames, dtype=np.float64) / NOMINAL_FPS, sample.video)

    return make


def needle_training_rows(
    count: int, frames: Sequence[int], lengths: Sequence[int | None], *, size: int = 56, seed: int = 0, reasoning: bool = False
) -> list[Sample]:
    """`count` needle rows (spec videos) for SFT: frames, needle length and depth drawn per row, the
    answer letter balanced (row i answers letter i mod 4), seeds disjoint from every evaluation cell.

    A length of None is the whole video (the flash fills it): mixing such rows with short needles is
    the curriculum a randomly initialised model needs: it learns colour → letter on long needles
    before it can learn to find a two-frame needle. `reasoning=False` trains the empty-reasoning
    answer `<think></think><answer>X</answer>` that NIAH's likelihood scoring reads."""
    if count <= 0 or not frames or not lengths:
        raise ValueError("needle training rows need count > 0, at least one frame count and one needle length")
    if not 0 <= seed < 1 << 12 or count > 1 << 32:
        raise ValueError(f"needle training rows: seed must be in 0..4095 and count at most 2**32, got {seed} and {count}")
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        num_frames = rng.choice(list(frames))
        fitting = [n for n in lengths if n is None or n <= num_frames]
        if not fitting:
            raise ValueError(f"no needle length in {list(lengths)} fits a haystack of {num_frames} frames")
        length = rng.choice(fitting) or num_frames
        sample, _ = make_sample(
            "needle", TRAIN_SEED_BASE + (seed << 32) + i, num_frames, size,
            depth=round(rng.random(), 4), answer=LETTERS[i % len(LETTERS)], length=length,
        )
        rows.append(sample if reasoning else dataclasses.replace(sample, reasoning=None))
    return rows
