"""Seeds derived from several integers: independent random streams that depend on nothing else."""

from __future__ import annotations

import numpy as np


def derived_seed(*keys: int) -> int:
    """A 64-bit seed hashed from `keys` (NumPy's SeedSequence): (seed, step, place) gives one
    prompt's stream, the same on any mesh, batch size or resume."""
    return int(np.random.SeedSequence(keys).generate_state(1, np.uint64)[0])
