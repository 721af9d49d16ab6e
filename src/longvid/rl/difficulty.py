"""DAPO's online group filter: drop a group whose mean reward is not strictly inside (low, high).

It is the online form of LongVILA-R1's offline difficulty filter (`data/reason/filter.py`): a group
whose rewards are all equal has zero advantage and gives no gradient.
"""

from __future__ import annotations

import torch


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
