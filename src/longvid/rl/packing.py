"""Shared-prefix packing: a GRPO group as one sequence `[prefix | r1 | … | rG]`.

The G responses of a group share one long video+question prefix. Instead of G forwards over
`[prefix | r_g]`, we run one forward over the packed sequence with a mask under which each response
sees the prefix and its own earlier tokens, never another response, and every response's positions
continue from the prefix end. Per-token log-probs and gradients equal the G separate forwards
(tests/test_packing.py proves it in float64); the prefix is computed once instead of G times.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from .. import masks
from ..model.adapter import VLMAdapter
from ..model.common import token_logprobs
from ..parallel.apply import SequenceParallel


@dataclass
class Packed:
    embeds: torch.Tensor  # [S, D]
    positions: torch.Tensor  # [..., S] (the adapter's layout; last dim is the sequence)
    segment_ids: torch.Tensor  # [S]: 0 prefix, g for response g (1-based)
    source_index: torch.Tensor  # [G, L]: packed position whose hidden state predicts each response token
    targets: torch.Tensor  # [G, L] response tokens (0 where padded)
    mask: torch.Tensor  # [G, L] bool, True for real response tokens
    deepstack: list[torch.Tensor] | None = None  # the prefix's per-layer visual features (VisualEmbeds.deepstack)
    groups: torch.Tensor | None = None  # [S]: which group each token belongs to, when several are packed

    @property
    def mask_fn(self) -> masks.MaskFn:
        if self.groups is None:
            return masks.shared_prefix(self.segment_ids)
        return masks.and_masks(masks.document(self.groups), masks.shared_prefix(self.segment_ids))

    def __len__(self) -> int:
        return self.embeds.shape[0]


def pack(
    adapter: VLMAdapter,
    prefix_embeds: torch.Tensor,
    prefix_positions: torch.Tensor,
    responses: list[torch.Tensor],
    *,
    deepstack: list[torch.Tensor] | None = None,
) -> Packed:
    """Lay out a prefix and G responses (1-D token tensors, no padding) as one sequence; `deepstack`
    is the prefix video's `VisualEmbeds.deepstack` (for families that have it)."""
    if not responses or any(len(r) == 0 for r in responses):
        raise ValueError("pack needs at least one response, each with at least one token")
    device = prefix_embeds.device
    prefix_len = prefix_embeds.shape[0]
    lengths = [len(r) for r in responses]
    flat = torch.cat([r.to(device) for r in responses])
    embeds = torch.cat([prefix_embeds, adapter.embed_tokens(flat).to(prefix_embeds.dtype)])
    cont = adapter.continuation_positions(prefix_positions, max(lengths))
    positions = torch.cat([prefix_positions] + [cont[..., :n] for n in lengths], dim=-1)
    segment_ids = torch.cat(
        [torch.zeros(prefix_len, dtype=torch.long, device=device)]
        + [torch.full((n,), g + 1, dtype=torch.long, device=device) for g, n in enumerate(lengths)]
    )
    width = max(lengths)
    source = torch.zeros(len(responses), width, dtype=torch.long, device=device)
    targets = torch.zeros(len(responses), width, dtype=torch.long, device=device)
    mask = torch.zeros(len(responses), width, dtype=torch.bool, device=device)
    start = prefix_len
    for g, r in enumerate(responses):
        n = len(r)
        # The first token is predicted by the prefix's last position, the rest by their predecessor.
        source[g, 0] = prefix_len - 1
        source[g, 1:n] = torch.arange(start, start + n - 1, device=device)
        targets[g, :n] = r.to(device)
        mask[g, :n] = True
        start += n
    return Packed(embeds, positions, segment_ids, source, targets, mask, deepstack)


def pack_groups(adapter: VLMAdapter, packs: list[Packed]) -> tuple[Packed, list[slice]]:
    """Several packed groups laid end to end as one sequence, each attending only to itself (a
    document mask over the groups, the shared-prefix mask inside each), and the rows of the
    combined `[sum G, L]` log-probs that belong to each group. One forward replaces len(packs)."""
    if not packs:
        raise ValueError("pack_groups needs at least one packed group")
    if len(packs) == 1:
        return packs[0], [slice(0, packs[0].targets.shape[0])]
    device = packs[0].embeds.device
    width = max(p.targets.shape[1] for p in packs)

    def widened(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]))

    positions, deepstack = adapter.concat_sequences([p.positions for p in packs], [p.deepstack for p in packs])
    starts = [0, *itertools.accumulate(len(p) for p in packs)]
    firsts = [0, *itertools.accumulate(p.targets.shape[0] for p in packs)]
    rows = [slice(a, b) for a, b in zip(firsts, firsts[1:])]
    combined = Packed(
        embeds=torch.cat([p.embeds for p in packs]),
        positions=positions,
        segment_ids=torch.cat([p.segment_ids for p in packs]),
        source_index=torch.cat([widened(p.source_index + start) for p, start in zip(packs, starts)]),
        targets=torch.cat([widened(p.targets) for p in packs]),
        mask=torch.cat([widened(p.mask) for p in packs]),
        deepstack=deepstack,
        groups=torch.cat([torch.full((len(p),), k, dtype=torch.long, device=device) for k, p in enumerate(packs)]),
    )
    return combined, rows


def packed_logprobs(
    adapter: VLMAdapter, packed: Packed, *, temperature: float = 1.0, sp: SequenceParallel | None = None
) -> torch.Tensor:
    """Per-token log-probs `[G, L]` (0 where padded) from one forward over the packed sequence.

    With `sp` the forward is sequence-parallel: each rank runs its token shard and scores the
    tokens it holds; every rank gets all the log-probs.
    """
    if sp is None:
        mask = masks.prepared_mask(packed.mask_fn, len(packed), packed.embeds.device)
        hidden = adapter.hidden_states(
            packed.embeds[None], packed.positions.unsqueeze(-2), attention_mask=mask, deepstack=packed.deepstack
        )[0][0]
        logp = token_logprobs(adapter, hidden[packed.source_index], packed.targets, temperature=temperature)
    else:
        logp = sp.token_logprobs(
            packed.embeds,
            packed.positions,
            packed.mask_fn,
            packed.source_index,
            packed.targets,
            temperature=temperature,
            deepstack=packed.deepstack,
        )
    return logp.masked_fill(~packed.mask, 0.0)


def separate_logprobs(
    adapter: VLMAdapter,
    prefix_embeds: torch.Tensor,
    prefix_positions: torch.Tensor,
    responses: list[torch.Tensor],
    *,
    temperature: float = 1.0,
    deepstack: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """The reference path: G causal forwards over `[prefix | r_g]`, one at a time."""
    width = max(len(r) for r in responses)
    rows = []
    prefix_len = prefix_embeds.shape[0]
    for r in responses:
        r = r.to(prefix_embeds.device)
        embeds = torch.cat([prefix_embeds, adapter.embed_tokens(r).to(prefix_embeds.dtype)])
        positions = torch.cat([prefix_positions, adapter.continuation_positions(prefix_positions, len(r))], dim=-1)
        hidden, _ = adapter.hidden_states(embeds[None], positions.unsqueeze(-2), deepstack=deepstack)
        rows.append(token_logprobs(adapter, hidden[0, prefix_len - 1 : -1], r, temperature=temperature))
    out = torch.zeros(len(responses), width, dtype=rows[0].dtype, device=rows[0].device)
    for g, row in enumerate(rows):
        out[g, : len(row)] = row
    return out
