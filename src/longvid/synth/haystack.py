"""The synthetic haystack for needle-in-a-haystack evaluation (`eval.niah`): grey frames with a
coloured flash at the asked depth, as a `(num_frames, depth, trial) -> (Sample, Frames)` maker."""

from __future__ import annotations

import numpy as np

from ..video.decode import Frames
from .tasks import LETTERS, NOMINAL_FPS, make_sample


def needle_haystack(size: int = 56, seed: int = 0):
    """A maker of synthetic needle items: trial t of a cell is seeded by (seed, t), and its answer
    is letter t mod 4, so with trials a multiple of 4 a model that ignores the video scores exactly
    chance in every cell."""

    def make(num_frames: int, depth: float, trial: int):
        letter = LETTERS[trial % len(LETTERS)]
        sample, pixels = make_sample("needle", seed * 100_003 + trial, num_frames, size, depth=depth, answer=letter)
        return sample, Frames(pixels, np.arange(num_frames, dtype=np.float64) / NOMINAL_FPS, sample.video)

    return make
