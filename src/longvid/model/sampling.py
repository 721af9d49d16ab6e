"""Shared-prefix sampling: prefill a prompt once, decode G continuations from its KV cache.

The prefix (video + question, often tens of thousands of tokens) is the expensive part; it is run
once, its KV cache is replicated for the G samples, and the samples are decoded as one batch.
`sample_batch` decodes the G samples of B prompts (a GRPO step's B x G rollouts) in one loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .adapter import VLMAdapter


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Samples:
    """G continuations of one prefix. Positions past a sample's end hold `pad_id`."""

    tokens: torch.Tensor  # [G, L]
    logprobs: torch.Tensor  # [G, L] float32, log-prob of each token under the sampling temperature
    lengths: torch.Tensor  # [G] tokens up to and including the stop token
    finished: torch.Tensor  # [G] bool: stopped on an end-of-turn token

    def mask(self) -> torch.Tensor:
        steps = torch.arange(self.tokens.shape[1], device=self.lengths.device)
        return steps[None, :] < self.lengths[:, None]


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to -inf) tokens outside the top-k and outside the top-p nucleus."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token once the mass before it already reaches top_p; the first token always stays.
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def sample(
    adapter: VLMAdapter,
    prefix_embeds: torch.Tensor,
    prefix_positions: torch.Tensor,
    num_samples: int,
    config: SamplingConfig,
    *,
    generator: torch.Generator | None = None,
    pad_id: int | None = None,
    deepstack: list[torch.Tensor] | None = None,
    prefilled: tuple[torch.Tensor, object] | None = None,
) -> Samples:
    """Decode `num_samples` continuations of one prefix (`[S, D]` embeddings, `[..., S]` positions;
    `deepstack`: the prefix video's `VisualEmbeds.deepstack`).

    `prefilled`: (the prefix's last hidden state `[D]`, its KV cache) from a prefill done elsewhere
    (the compressed windowed prefill); the prefix is then not run again."""
    generators = None if generator is None else [generator]
    return sample_batch(
        adapter, [(prefix_embeds, prefix_positions)], num_samples, config, generators=generators, pad_id=pad_id, deepstacks=[deepstack],
        prefilled=[prefilled],
    )[0]


@torch.no_grad()
def sample_batch(
    adapter: VLMAdapter,
    prefixes: Sequence[tuple[torch.Tensor, torch.Tensor]],
    num_samples: int,
    config: SamplingConfig,
    *,
    generators: Sequence[torch.Generator | None] | None = None,
    pad_id: int | None = None,
    deepstacks: Sequence[list[torch.Tensor] | None] | None = None,
    prefilled: Sequence[tuple[torch.Tensor, object] | None] | None = None,
) -> list[Samples]:
    """Decode `num_samples` continuations of each of B prefixes in one decoding loop of B*G rows.

    Each prefix (`[S_b, D]` embeddings, `[..., S_b]` positions) is prefilled alone, so its KV cache
    and first logits are what a one-prompt call computes; the caches are left-padded to the longest
    prefix and merged, and a key mask hides the padding while decoding. Positions come from
    `adapter.continuation_positions` per prefix, as in the one-prompt call.

    Random numbers: prompt b draws only from `generators[b]` (the global RNG where None), once per
    decoding step while any of its rows is unfinished: the same draws a one-prompt call with that
    generator makes, so batched and one-prompt rollouts agree token for token.
    """
    if not prefixes:
        raise ValueError("sample_batch needs at least one prefix")
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    batch = len(prefixes)
    if generators is None:
        generators = [None] * batch
    if len(generators) != batch:
        raise ValueError(f"{len(generators)} generators for {batch} prefixes")
    device = prefixes[0][0].device
    stop = torch.tensor(adapter.eos_token_ids, device=device)
    pad = int(pad_id if pad_id is not None else stop[0])
    g, rows = num_samples, batch * num_samples
    logits, cache, key_mask = _prefill(adapter, prefixes, g, deepstacks or [None] * batch, prefilled or [None] * batch)
    steps = torch.stack([adapter.continuation_positions(p, config.max_new_tokens) for _, p in prefixes], dim=-2)
    steps = steps.repeat_interleave(g, dim=-2)  # [..., B*G, max_new_tokens]

    tokens, logprobs = [], []
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    lengths = torch.full((rows,), config.max_new_tokens, device=device)
    decoded = [0] * batch  # steps each prompt took: it stops once all its rows have finished
    for step in range(config.max_new_tokens):
        active = [b for b in range(batch) if not decoded[b]]
        scaled = logits if config.greedy else logits / config.temperature
        logp = torch.log_softmax(scaled, dim=-1)
        if config.greedy:
            token = logits.argmax(-1)
        else:
            probs = torch.softmax(filter_logits(scaled, config.top_k, config.top_p), dim=-1)
            token = torch.full((rows,), pad, dtype=torch.long, device=device)
            for b in active:
                part = slice(b * g, (b + 1) * g)
                token[part] = torch.multinomial(probs[part], 1, generator=generators[b]).squeeze(-1)
        token_logp = logp.gather(-1, token[:, None]).squeeze(-1)
        token = token.masked_fill(done, pad)
        tokens.append(token)
        logprobs.append(token_logp.masked_fill(done, 0.0))
        newly = ~done & torch.isin(token, stop)
        lengths = torch.where(newly, torch.full_like(lengths, step + 1), lengths)
        done |= newly
        finished = done.view(batch, g).all(dim=1).tolist()  # one host sync per step
        for b in active:
            if finished[b] or step + 1 == config.max_new_tokens:
                decoded[b] = step + 1
        if all(decoded):
            break
        mask = None
        if key_mask is not None:
            key_mask = torch.cat([key_mask, key_mask.new_ones(rows, 1)], dim=1)
            mask = key_mask[:, None, None, :]
        hidden, cache = adapter.hidden_states(
            adapter.embed_tokens(token)[:, None], steps[..., step : step + 1], attention_mask=mask, cache=cache, use_cache=True
        )
        logits = adapter.logits(hidden[:, -1]).float()
    tokens_all, logprobs_all = torch.stack(tokens, dim=1), torch.stack(logprobs, dim=1)
    out = []
    for b in range(batch):
        part = slice(b * g, (b + 1) * g)
        out.append(Samples(tokens_all[part, : decoded[b]], logprobs_all[part, : decoded[b]], lengths[part], done[part]))
    return out


def _prefill(
    adapter: VLMAdapter,
    prefixes: Sequence[tuple[torch.Tensor, torch.Tensor]],
    repeats: int,
    deepstacks: Sequence[list[torch.Tensor] | None],
    prefilled: Sequence[tuple[torch.Tensor, Any] | None],
) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
    """Last-position logits `[B*G, V]`, the KV cache with each prefix's rows repeated G times, and the
    key mask `[B*G, S_max]` (None when every prefix has the same length, so nothing is padded).
    A prefix given `prefilled` (last hidden state, cache) is not run again."""
    caches, logits = [], []
    for (embeds, positions), deepstack, done in zip(prefixes, deepstacks, prefilled, strict=True):
        if done is None:
            hidden, cache = adapter.hidden_states(embeds[None], positions.unsqueeze(-2), use_cache=True, deepstack=deepstack)
            last = hidden[:, -1]
        else:
            last, cache = done[0][None], done[1]
        logits.append(adapter.logits(last).float())
        caches.append(cache)
    logits = torch.cat(logits).repeat_interleave(repeats, dim=0)
    # A compressed prefill caches fewer keys than the prefix has tokens: the cache's length counts.
    lengths = [cache.get_seq_length() for cache in caches]
    if len(prefixes) == 1:
        if repeats > 1:
            caches[0].batch_repeat_interleave(repeats)
        return logits, caches[0], None
    return logits, _merge_caches(caches, lengths, repeats), _key_mask(lengths, repeats, logits.device)


def _merge_caches(caches: list, lengths: list[int], repeats: int):
    """One `DynamicCache` of the prefixes' caches, each left-padded (zeros) to the longest, rows repeated."""
    from transformers import DynamicCache

    width = max(lengths)
    merged = []
    for layers in zip(*(cache.layers for cache in caches)):
        if any(getattr(layer, "is_sliding", False) for layer in layers):
            raise NotImplementedError("batched sampling does not merge sliding-window caches; sample one prompt at a time")
        keys = torch.cat([F.pad(layer.keys, (0, 0, width - n, 0)) for layer, n in zip(layers, lengths)])
        values = torch.cat([F.pad(layer.values, (0, 0, width - n, 0)) for layer, n in zip(layers, lengths)])
        merged.append((keys.repeat_interleave(repeats, dim=0), values.repeat_interleave(repeats, dim=0)))
    return DynamicCache(ddp_cache_data=merged)


def _key_mask(lengths: list[int], repeats: int, device: torch.device) -> torch.Tensor | None:
    width = max(lengths)
    if all(n == width for n in lengths):
        return None
    starts = torch.tensor([width - n for n in lengths], device=device).repeat_interleave(repeats)
    return torch.arange(width, device=device)[None, :] >= starts[:, None]
