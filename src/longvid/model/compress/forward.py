"""Forwards over a compressed sequence: one masked pass (training, reference), windowed prefill
with eviction (inference), and the rollout / packed GRPO passes over a compressed prefix."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ... import masks
from ..adapter import VLMAdapter
from .layout import RAW, Layout
from .summary import routing


def masked_hidden_states(adapter: VLMAdapter, layout: Layout) -> torch.Tensor:
    """Hidden states `[S', D]` of the whole compressed sequence in one forward under its mask."""
    # With no raw visual token (ratio 1 everywhere) the mask is plain causal: today's path exactly.
    mask = masks.prepared_mask(layout.mask_fn, len(layout), layout.embeds.device) if layout.compressed else None
    with routing(layout.is_summary[None]):
        hidden, _ = adapter.hidden_states(layout.embeds[None], layout.positions.unsqueeze(-2), attention_mask=mask)
    return hidden[0]


@dataclasses.dataclass
class Prefilled:
    """A compressed prefix after windowed prefill: its cache holds only kept tokens and summaries."""

    cache: Any
    last_hidden: torch.Tensor  # [S_tail, D] hidden states of the text after the video
    positions: torch.Tensor  # [..., S'] positions of the whole layout (continuations follow them)
    kept: torch.Tensor  # [S_cache] layout indices of the tokens whose K/V the cache holds


@torch.no_grad()
def windowed_prefill(adapter: VLMAdapter, layout: Layout, cache: Any = None) -> Prefilled:
    """Prefill the prefix text, each window (then drop its raw visual K/V), then the text after.

    `cache` may be any transformers cache whose layers hold `keys`/`values` `[B, H, S, D]`
    (DynamicCache); None starts a DynamicCache."""
    if not layout.windows:
        raise ValueError("the layout has no windows")
    segments = [(0, layout.windows[0][0])] + list(layout.windows) + [(layout.windows[-1][1], len(layout))]
    if segments[-1][1] <= segments[-1][0]:
        raise ValueError("the sequence must have text after the video (the question, the assistant turn)")
    if not layout.compressed:  # nothing to evict: one pass, exactly today's prefill
        segments = [(0, len(layout))]
    kept = []
    hidden = None
    for a, b in segments:
        if b <= a:
            continue
        before = cache.get_seq_length() if cache is not None else 0
        with routing(layout.is_summary[None, a:b]):
            hidden, cache = adapter.hidden_states(
                layout.embeds[None, a:b], layout.positions[..., a:b].unsqueeze(-2), cache=cache, use_cache=True
            )
        keep = (layout.kind[a:b] != RAW).nonzero().flatten()
        if len(keep) < b - a:
            _evict(cache, before, keep)
        kept.append(keep + a)
    tail = len(layout) - layout.windows[-1][1]
    return Prefilled(cache, hidden[0, -tail:], layout.positions, torch.cat(kept))


def _evict(cache: Any, before: int, keep_in_segment: torch.Tensor) -> None:
    """Keep the first `before` cached tokens and, of the segment after them, `keep_in_segment`."""
    for layer in cache.layers:
        index = torch.cat([torch.arange(before, device=layer.keys.device), keep_in_segment.to(layer.keys.device) + before])
        layer.keys = layer.keys.index_select(-2, index)
        layer.values = layer.values.index_select(-2, index)


def cache_bytes(cache: Any) -> int:
    """Bytes of the K/V tensors a transformers cache holds."""
    return sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size() for layer in cache.layers)


def sp_hidden_states(sp: Any, layout: Layout) -> torch.Tensor:
    """`masked_hidden_states` through a `SequenceParallel` (a mesh of one is the plain path):
    this rank's hidden states, routed by this rank's shard of the summary mask."""
    is_summary = sp.shard(layout.is_summary.to(torch.uint8)).bool()
    with routing(is_summary[None]):
        return sp.hidden_states(layout.embeds, layout.positions, layout.mask_fn)


# ------------------------------------------------------------------------------------------------
# Rollout and GRPO over a compressed prefix. A trainer builds ONE layout per group (a ratio per
# window, drawn or fixed) and uses it everywhere, so rollout and training see the same inputs
# (rl/trainer.py does this with `TrainingCompression.prefix_layout` and `rollout_groups(layouts=)`):
#   layout = Compressor(summary, ratio).layout(prompt, embeds, positions)   # or interleave(...)
#   samples = compress.sample(adapter, layout, G, sampling_config)           # prefill once, evicted
#   layout = layout.refilled(embeds_with_grad, summary.embedding)           # the same layout, trainable
#   packed = rl.packing.pack(adapter, layout.embeds, layout.positions, responses)
#   logp = compress.packed_logprobs(adapter, layout, packed, sp=sp)          # policy and reference
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def sample(adapter: VLMAdapter, layout: Layout, num_samples: int, config: Any, **kwargs: Any):
    """`sampling.sample` over a compressed prefix: windowed prefill once (raw visual K/V evicted),
    the cache replicated for the G samples, decoding as usual."""
    from ..sampling import sample as sample_from

    pre = windowed_prefill(adapter, layout)
    return sample_from(
        adapter, layout.embeds, layout.positions, num_samples, config, prefilled=(pre.last_hidden[-1], pre.cache), **kwargs
    )


def packed_mask(layout: Layout, packed: Any) -> tuple[masks.MaskFn, torch.Tensor]:
    """For `packed = rl.packing.pack(adapter, layout.embeds, layout.positions, responses)`: the
    composed mask (shared prefix AND visual summary) and the summary rows of the packed sequence."""
    if not torch.equal(packed.embeds[: len(layout)], layout.embeds):
        raise ValueError("the packed sequence does not start with this compressed prefix")
    padded = layout.padded(len(packed))
    if not layout.compressed:  # ratio 1 everywhere: the visual-summary mask is causal, today's pass
        return packed.mask_fn, padded.is_summary
    return masks.and_masks(packed.mask_fn, padded.mask_fn), padded.is_summary


def packed_logprobs(
    adapter: VLMAdapter, layout: Layout, packed: Any, *, temperature: float = 1.0, sp: Any = None
) -> torch.Tensor:
    """GRPO's packed pass `[compressed prefix | r1 | … | rG]`: per-token log-probs `[G, L]` (0 where
    padded) from one forward under the composed mask; with `sp`, sequence-parallel."""
    from ..common import token_logprobs

    mask_fn, is_summary = packed_mask(layout, packed)
    if sp is None:
        mask = masks.prepared_mask(mask_fn, len(packed), packed.embeds.device)
        with routing(is_summary[None]):
            hidden = adapter.hidden_states(packed.embeds[None], packed.positions.unsqueeze(-2), attention_mask=mask)[0][0]
        logp = token_logprobs(adapter, hidden[packed.source_index], packed.targets, temperature=temperature)
    else:
        with routing(sp.shard(is_summary.to(torch.uint8)).bool()[None]):
            logp = sp.token_logprobs(
                packed.embeds, packed.positions, mask_fn, packed.source_index, packed.targets, temperature=temperature
            )
    return logp.masked_fill(~packed.mask, 0.0)


def continuation_logprobs(adapter: VLMAdapter, prefilled: Prefilled, continuations: list[torch.Tensor]) -> torch.Tensor:
    """Log-prob `[C]` of each token sequence continuing a prefilled prefix (multiple-choice scoring
    by likelihood): the cache replicated for the C candidates, one batched right-padded pass. The
    prefilled cache is consumed."""
    if not continuations or any(len(c) == 0 for c in continuations):
        raise ValueError("continuation_logprobs needs at least one non-empty continuation")
    first = torch.log_softmax(adapter.logits(prefilled.last_hidden[-1]).double(), -1)
    device = prefilled.last_hidden.device
    width = max(len(c) for c in continuations)
    ids = torch.zeros(len(continuations), width, dtype=torch.long, device=device)
    for i, c in enumerate(continuations):
        ids[i, : len(c)] = c.to(device)
    total = first[ids[:, 0]]
    if width > 1:
        cache = prefilled.cache
        if len(continuations) > 1:
            cache.batch_repeat_interleave(len(continuations))
        pos = adapter.continuation_positions(prefilled.positions, width - 1)
        pos = pos.unsqueeze(-2).expand(*pos.shape[:-1], len(continuations), width - 1)
        hidden, _ = adapter.hidden_states(adapter.embed_tokens(ids[:, :-1]), pos, cache=cache, use_cache=True)
        logp = torch.log_softmax(adapter.logits(hidden).double(), -1).gather(-1, ids[:, 1:, None])[..., 0]
        steps = torch.arange(1, width, device=device)
        lengths = torch.tensor([len(c) for c in continuations], device=device)
        total = total + (logp * (steps[None] < lengths[:, None])).sum(-1)
    return total
