"""Layout: where summary slots go in the visual span, their positions, kinds and windows."""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch

from ... import masks
from ...errors import ConfigError
from ..adapter import VLMAdapter
from .summary import SummaryTokens, num_windows

KEPT, RAW, SUMMARY = 0, 1, 2  # token kinds: kept (text, uncompressed visual), raw visual (evicted), summary
NO_WINDOW = -1


@dataclasses.dataclass
class Layout:
    """A compressed sequence: summary slots interleaved in the visual span."""

    embeds: torch.Tensor  # [S', D]
    positions: torch.Tensor  # [..., S']
    kind: torch.Tensor  # [S'] KEPT / RAW / SUMMARY
    window_id: torch.Tensor  # [S'] window of visual and summary tokens, NO_WINDOW elsewhere
    source: torch.Tensor  # [S'] index into the uncompressed sequence (-1 for summaries)
    windows: list[tuple[int, int]]  # [start, stop) of each window in the compressed sequence
    labels: torch.Tensor | None = None  # [S'] next-token labels, -100 on visual and summary tokens

    def __len__(self) -> int:
        return self.embeds.shape[0]

    @property
    def is_summary(self) -> torch.Tensor:
        return self.kind == SUMMARY

    @property
    def mask_fn(self) -> masks.MaskFn:
        return masks.visual_summary(self.kind, self.window_id)

    def refilled(self, embeds: torch.Tensor, summary_embedding: torch.Tensor) -> "Layout":
        """This layout over new embeddings `[S, D]` of the same uncompressed sequence and a summary
        embedding: the GRPO policy pass (with gradients) and reference pass (another model's)
        rebuild the very prefix the rollout decoded from."""
        if embeds.shape[0] <= int(self.source.max()):
            raise ValueError(f"embeddings of {embeds.shape[0]} tokens for a layout over {int(self.source.max()) + 1}")
        rows = embeds[self.source.clamp(min=0)]
        summary = summary_embedding.to(rows.dtype)[None].expand_as(rows)
        return dataclasses.replace(self, embeds=torch.where(self.is_summary[:, None], summary, rows))

    @property
    def compressed(self) -> bool:
        """Whether any raw visual token is evicted (False: ratio 1 everywhere, today's sequence)."""
        return bool((self.kind == RAW).any())

    def padded(self, length: int) -> "Layout":
        """Kinds and windows extended with plain text up to `length` (responses packed after it)."""
        extra = length - len(self)
        if extra < 0:
            raise ValueError(f"cannot pad a layout of {len(self)} tokens to {length}")
        kind = torch.cat([self.kind, self.kind.new_full((extra,), KEPT)])
        window_id = torch.cat([self.window_id, self.window_id.new_full((extra,), NO_WINDOW)])
        return dataclasses.replace(self, kind=kind, window_id=window_id)


def interleave(
    embeds: torch.Tensor,
    positions: torch.Tensor,
    visual_mask: torch.Tensor,
    summary_embedding: torch.Tensor | None,
    ratios: int | Sequence[int],
    window: int,
    labels: torch.Tensor | None = None,
) -> Layout:
    """Insert summary slots into the (one, contiguous) visual span of `embeds [S, D]`.

    `ratios`: one ratio for every window, or one per window (training draws them).
    `summary_embedding` may be None when every ratio is 1 (nothing compressed)."""
    visual = visual_mask.nonzero().flatten().to(embeds.device)
    if len(visual) == 0:
        raise ValueError("the sequence has no visual tokens to compress")
    first, count = int(visual[0]), len(visual)
    if int(visual[-1]) - first + 1 != count:
        raise ValueError("the visual tokens must form one contiguous span (one video per sequence)")
    if window <= 0:
        raise ConfigError(f"compression window must be > 0 visual tokens, got {window}")
    n_win = num_windows(count, window)
    per_window = [int(ratios)] * n_win if isinstance(ratios, int) else [int(r) for r in ratios]
    if len(per_window) != n_win:
        raise ValueError(f"{len(per_window)} ratios for {n_win} windows of {window} visual tokens")
    for r in per_window:
        if r <= 0:
            raise ConfigError(f"compression ratio must be > 0, got {r}")
        if r > window:
            raise ConfigError(f"compression ratio {r} is larger than the window of {window} visual tokens")

    if summary_embedding is None:
        if any(r != 1 for r in per_window):
            raise ConfigError("compression ratios above 1 need trained summary tokens (SummaryTokens)")
        summary_embedding = embeds.new_zeros(embeds.shape[-1])
    device = embeds.device
    summary_slot = embeds.shape[0]  # index of the summary embedding in the table gathered from below

    def plain(start: int, stop: int, kind: int = KEPT, window_id: int = NO_WINDOW):
        tokens = torch.arange(start, stop, device=device)
        return tokens, tokens, torch.full((stop - start,), kind, device=device), torch.full((stop - start,), window_id, device=device)

    parts = [plain(0, first)]  # each part: (source index, position source, kind, window id)
    windows, cursor = [], first
    for w, r in enumerate(per_window):
        start = first + w * window
        n = min(window, count - w * window)
        if r == 1:  # kept uncompressed: visible and cached like text
            parts.append(plain(start, start + n))
        else:
            g = torch.arange(math.ceil(n / r), device=device)
            group_end = torch.clamp((g + 1) * r, max=n)  # visual tokens up to and including each group
            slots = group_end + g  # summary g follows its group and the g summaries before it
            idx = torch.arange(n, device=device)
            src, pos, kind, wid = plain(0, n + len(g), RAW, w)
            src, pos, kind = src.clone(), pos.clone(), kind.clone()
            src[idx + idx // r] = pos[idx + idx // r] = idx + start
            src[slots] = summary_slot
            pos[slots] = start + group_end - 1  # a summary sits at the position of the token it follows
            kind[slots] = SUMMARY
            parts.append((src, pos, kind, wid))
        windows.append((cursor, cursor + len(parts[-1][0])))
        cursor = windows[-1][1]
    parts.append(plain(first + count, embeds.shape[0]))

    src, gather_pos, kind, window_id = (torch.cat(column) for column in zip(*parts))
    table = torch.cat([embeds, summary_embedding.to(embeds.dtype)[None]])
    out_labels = None
    if labels is not None:
        out_labels = torch.where(kind == KEPT, labels[src.clamp(max=summary_slot - 1)], -100)
    source = torch.where(kind == SUMMARY, -1, src)
    return Layout(
        embeds=table[src],
        positions=positions[..., gather_pos],
        kind=kind,
        window_id=window_id,
        source=source,
        windows=windows,
        labels=out_labels,
    )


def layout_for(
    adapter: VLMAdapter,
    summary: SummaryTokens,
    embeds: torch.Tensor,
    positions: torch.Tensor,
    visual_mask: torch.Tensor,
    ratios: int | Sequence[int],
    labels: torch.Tensor | None = None,
) -> Layout:
    """`interleave` with the summary module's embedding and window; a single ratio is checked
    against the trained set (inference)."""
    if isinstance(ratios, int):
        summary.check_inference_ratio(ratios)
    return interleave(embeds, positions, visual_mask.to(embeds.device), summary.embedding, ratios, summary.window, labels)
