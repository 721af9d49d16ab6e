"""Rollout: a group of G responses to one prompt, its prefix prefilled once."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..inputs import Encoded
from ..model.adapter import VLMAdapter
from ..model.sampling import Samples, SamplingConfig, sample


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
def rollout_group(
    adapter: VLMAdapter,
    encoded: Encoded,
    group_size: int,
    config: SamplingConfig,
    *,
    generator: torch.Generator | None = None,
) -> Group:
    embeds, positions = adapter.prefix_inputs(encoded.prompt, encoded.visual)
    out = sample(adapter, embeds, positions, group_size, config, generator=generator, deepstack=encoded.visual.deepstack)
    texts = [adapter.decode(out.tokens[g, : int(n)]) for g, n in enumerate(out.lengths)]
    return Group(encoded, out, texts)
