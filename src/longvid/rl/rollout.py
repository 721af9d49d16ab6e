"""Rollout: G responses to each prompt of a step, each prefix prefilled once, decoded as one batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..inputs import Encoded
from ..model.adapter import VLMAdapter
from ..model.compress import Layout, windowed_prefill
from ..model.sampling import Samples, SamplingConfig, sample_batch


@dataclass
class Group:
    """One prompt and its G sampled responses."""

    encoded: Encoded
    samples: Samples
    texts: list[str]
    layout: Layout | None = None  # the compressed prefix the responses continue (visual summary tokens)

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
    layouts: Sequence[Layout] | None = None,
) -> list[Group]:
    """A group per prompt, all B x G sequences in one decoding loop; prompt b draws from `generators[b]`.

    `layouts`: each prompt compressed (visual summary tokens): prefilled window by window with the
    raw visual K/V evicted, then decoded in the same loop."""
    if layouts is None:
        prefixes = [adapter.prefix_inputs(e.prompt, e.visual) for e in encoded]
        outs = sample_batch(
            adapter, prefixes, group_size, config, generators=generators, deepstacks=[e.visual.deepstack for e in encoded]
        )
    else:
        prefilled = [windowed_prefill(adapter, layout) for layout in layouts]
        outs = sample_batch(
            adapter, [(layout.embeds, layout.positions) for layout in layouts], group_size, config, generators=generators,
            prefilled=[(pre.last_hidden[-1], pre.cache) for pre in prefilled],
        )
    return [Group(e, out, [adapter.decode(out.tokens[g, : int(n)]) for g, n in enumerate(out.lengths)],
                  None if layouts is None else layouts[b])
            for b, (e, out) in enumerate(zip(encoded, outs))]


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
