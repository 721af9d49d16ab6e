"""`mask_fn(q_idx, kv_idx) -> bool`: the one language for attention patterns.

A mask function takes integer tensors of *global* query and key positions (broadcastable against
each other) and returns a bool tensor, True where the query may attend to the key. It is written
with tensor operations only, so every backend can consume it: `dense_mask` materialises it for
SDPA on CPU, `block_mask` turns it into a FlexAttention `BlockMask` on GPU, and ring attention
evaluates it block by block with the global positions of each block.
"""

from __future__ import annotations

from typing import Callable

import torch

MaskFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def causal(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
    return kv_idx <= q_idx


def full(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(q_idx >= kv_idx)


def shared_prefix(segment_ids: torch.Tensor) -> MaskFn:
    """Causal attention where segment 0 is a shared prefix and segments 1..G are responses.

    Each response token sees the prefix and earlier tokens of its own response, never another
    response. `segment_ids` is a 1-D tensor over the packed sequence.
    """

    def mask_fn(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        seg_q = segment_ids[q_idx]
        seg_kv = segment_ids[kv_idx]
        return (kv_idx <= q_idx) & ((seg_kv == 0) | (seg_kv == seg_q))

    return mask_fn


def document(segment_ids: torch.Tensor) -> MaskFn:
    """Causal attention inside each segment only (several samples packed into one row)."""

    def mask_fn(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return (kv_idx <= q_idx) & (segment_ids[q_idx] == segment_ids[kv_idx])

    return mask_fn


def and_masks(*fns: MaskFn) -> MaskFn:
    def mask_fn(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        out = fns[0](q_idx, kv_idx)
        for fn in fns[1:]:
            out = out & fn(q_idx, kv_idx)
        return out

    return mask_fn


def dense_mask(
    mask_fn: MaskFn,
    q_len: int,
    kv_len: int,
    *,
    q_offset: int = 0,
    kv_offset: int = 0,
    q_positions: torch.Tensor | None = None,
    kv_positions: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Materialise `mask_fn` as a bool `[q_len, kv_len]` tensor.

    Global positions are `offset + arange(len)` unless explicit position tensors are given (a
    zigzag shard holds non-contiguous positions).
    """
    q = q_positions if q_positions is not None else torch.arange(q_len, device=device) + q_offset
    kv = kv_positions if kv_positions is not None else torch.arange(kv_len, device=device) + kv_offset
    return mask_fn(q[:, None], kv[None, :])


def block_mask(mask_fn: MaskFn, q_len: int, kv_len: int, device: torch.device | str = "cuda"):
    """A FlexAttention `BlockMask` for `mask_fn` (the GPU path)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return mask_fn(q_idx, kv_idx)

    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=q_len, KV_LEN=kv_len, device=device)


def prepared_mask(mask_fn: MaskFn, length: int, device: torch.device):
    """The dense bool `[1, 1, S, S]` mask the model's own attention (SDPA or eager) takes.

    A `BlockMask` is never handed to these implementations (SDPA refuses it): the FlexAttention
    path pairs the block mask with its own attention function, chosen together in
    `longvid.parallel.attention.attention_for`."""
    return dense_mask(mask_fn, length, length, device=device)[None, None]


def visual_summary(kind: torch.Tensor, window_id: torch.Tensor) -> MaskFn:
    """Visual summary tokens (Video-XL): causal, except that a raw visual token (`kind == 1`) is
    visible only to tokens of its own window (`window_id`). Every token thus sees the text before
    the video and the summary tokens (`kind == 2`) of earlier windows; text after the video
    (`window_id == -1`) sees text and summaries, never a raw visual token. Compose with
    `shared_prefix` through `and_masks` for packed GRPO passes (pad `kind`/`window_id` over them)."""

    def mask_fn(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return (kv_idx <= q_idx) & ((kind[kv_idx] != 1) | (window_id[kv_idx] == window_id[q_idx]))

    return mask_fn
