"""The synthetic haystack for needle-in-a-haystack evaluation (`eval.niah`): grey frames with a
coloured flash at the asked depth, as a `(num_frames, depth, trial) -> (Sample, Frames)` maker."""

from __future__ import annotations

import numpy as np

from ..video.decode import Frames
from .tasks import NOMINAL_FPS, make_sample


def needle_haystack(size: int = 56, seed: int = 0):
    """A maker of synthetic needle items: trial t of a cell is seeded by (seed, t)."""

    def make(num_frames: int, depth: float, trial: int):
        sample, pixels = make_sample("needle", seed * 100_003 + trial, num_frames, size, depth=depth, shuffle_options=True)
        return sample, Frames(pixels, np.arange(num_frames, dtype=np.float64) / NOMINAL_FPS, sample.video)

    return make
