"""Model-family-independent helpers over the adapter protocol."""

from __future__ import annotations

import torch

from .adapter import VLMAdapter


def token_logprobs(
    adapter: VLMAdapter, hidden: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0, chunk: int = 2048
) -> torch.Tensor:
    """Log-probability of each target under the LM head applied to `hidden` (`[..., D]` → `[...]`).

    Computed in at least float32, in chunks, so the full `[S, vocab]` logits never exist at once.
    """
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_t = targets.reshape(-1).to(flat_h.device)
    out = []
    # One pass even over no rows, so the result stays in the autograd graph (collectives in the
    # backward of a sequence-parallel forward need every rank to backpropagate).
    for start in range(0, max(1, flat_h.shape[0]), chunk):
        logits = adapter.logits(flat_h[start : start + chunk])
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if temperature != 1.0:
            logits = logits / temperature
        logp = torch.log_softmax(logits, dim=-1)
        out.append(logp.gather(-1, flat_t[start : start + chunk, None]).squeeze(-1))
    return torch.cat(out).reshape(targets.shape)
