"""Rollout: G responses to each prompt of a step, each prefix prefilled once, decoded as one batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..inputs import Encoded
from ..model.adapter import VLMAdapter
from ..model.sampling import Samples, SamplingConfig, sample_batch


@dataclass
class Group:
    """One prompt and its G sampled responses."""

    encoded: Encoded
    samples: Samples
    texts: list[str]

    @property
    def responses(self) -> list[torch.Tensor]:
        """Each response's tokens up to and including its stop token (at least one token)."""
        return [self.samples.tokens[g, : max(1, int(n))] for g, n in enumerate(self.samples.lengths)]


@torch.no_grad()
def rollout_groups(
    adapter: VLMAdapter,
    encoded: Sequence[Encoded],
    group_size: int,
    config: SamplingConfig,
    *,
    generators: Sequence[torch.Generator | None] | None = None,
) -> list[Group]:
    """A group per prompt, all B x G sequences in one decoding loop; prompt b draws from `generators[b]`."""
    prefixes = [adapter.prefix_inputs(e.prompt, e.visual) for e in encoded]
    outs = sample_batch(
        adapter, prefixes, group_size, config, generators=generators, deepstacks=[e.visual.deepstack for e in encoded]
    )
    return [Group(e, out, [adapter.decode(out.tokens[g, : int(n)]) for g, n in enumerate(out.lengths)])
            for e, out in zip(encoded, outs)]


def rollout_group(
    adapter: VLMAdapter,
    encoded: Encoded,
    group_size: int,
    config: SamplingConfig,
    *,
    generator: torch.Generator | None = None,
) -> Group:
    """The group of one prompt (`rollout_groups` with B = 1)."""
    return rollout_groups(adapter, [encoded], group_size, config, generators=None if generator is None else [generator])[0]
