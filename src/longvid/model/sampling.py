"""Shared-prefix sampling: prefill a prompt once, decode G continuations from its KV cache.

The prefix (video + question, often tens of thousands of tokens) is the expensive part; it is run
once, its KV cache is replicated for the G samples, and the samples are decoded as one batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
    prefilled: tuple[torch.Tensor, object] | None = None,
) -> Samples:
    """Decode `num_samples` continuations of one prefix (`[S, D]` embeddings, `[..., S]` positions).

    `prefilled`: (the prefix's last hidden state `[D]`, its KV cache) from a prefill done elsewhere
    (the compressed windowed prefill); the prefix is then not run again."""
    stop = torch.tensor(adapter.eos_token_ids, device=prefix_embeds.device)
    pad = int(pad_id if pad_id is not None else stop[0])
    if prefilled is None:
        hidden, cache = adapter.hidden_states(prefix_embeds[None], prefix_positions.unsqueeze(-2), use_cache=True)
        last = hidden[:, -1]
    else:
        last, cache = prefilled[0][None], prefilled[1]
    logits = adapter.logits(last).float().expand(num_samples, -1)
    if num_samples > 1:
        cache.batch_repeat_interleave(num_samples)
    steps = adapter.continuation_positions(prefix_positions, config.max_new_tokens)

    tokens, logprobs = [], []
    done = torch.zeros(num_samples, dtype=torch.bool, device=prefix_embeds.device)
    lengths = torch.full((num_samples,), config.max_new_tokens, device=prefix_embeds.device)
    for step in range(config.max_new_tokens):
        scaled = logits if config.greedy else logits / config.temperature
        logp = torch.log_softmax(scaled, dim=-1)
        if config.greedy:
            token = logits.argmax(-1)
        else:
            probs = torch.softmax(filter_logits(scaled, config.top_k, config.top_p), dim=-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        token_logp = logp.gather(-1, token[:, None]).squeeze(-1)
        token = token.masked_fill(done, pad)
        tokens.append(token)
        logprobs.append(token_logp.masked_fill(done, 0.0))
        newly = ~done & torch.isin(token, stop)
        lengths = torch.where(newly, torch.full_like(lengths, step + 1), lengths)
        done |= newly
        if bool(done.all()) or step + 1 == config.max_new_tokens:
            break
        pos = steps[..., step : step + 1].unsqueeze(-2).expand(*steps.shape[:-1], num_samples, 1)
        hidden, cache = adapter.hidden_states(adapter.embed_tokens(token)[:, None], pos, cache=cache, use_cache=True)
        logits = adapter.logits(hidden[:, -1]).float()
    return Samples(
        tokens=torch.stack(tokens, dim=1),
        logprobs=torch.stack(logprobs, dim=1),
        lengths=lengths,
        finished=done,
    )
