"""Sequence parallelism applied to an adapter from outside (the model's code is untouched).

`SequenceParallel` runs one long sample across the ranks of an SP group in two stages:
- the vision tower by frames: each rank encodes its share of temporal patches, the embeddings are
  all-gathered (exact for Qwen2.5-VL: its vision attention never crosses a temporal patch);
- the language model by tokens: the `[prompt | response]` sequence is sharded (zigzag by default),
  attention runs through the registered Ulysses / ring / hybrid implementation with the sequence's
  `mask_fn` evaluated on global positions.
On a mesh of one it is the plain single-process path, so trainers never special-case it.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from ..masks import MaskFn, causal, prepared_mask
from ..model.adapter import VideoInputs, VisualEmbeds, VLMAdapter
from .attention import ShardedMask, register_sp_attention
from .mesh import Mesh, check_heads
from ..model.common import token_logprobs
from .shard import IGNORE_INDEX, gather_embeddings, shard_positions, shard_sequence, split_frames


class SequenceParallel:
    def __init__(self, adapter: VLMAdapter, mesh: Mesh, *, mode: str = "hybrid", layout: str = "zigzag"):
        self.adapter, self.mesh, self.layout = adapter, mesh, layout
        self.attention = None
        if mesh.sp_size > 1:
            ulysses = {"ulysses": mesh.sp_size, "ring": 1}.get(mode, mesh.ulysses_size)
            check_heads(*adapter.attention_heads, ulysses)
            self.attention = register_sp_attention(mesh, mode)

    @property
    def active(self) -> bool:
        return self.mesh.sp_size > 1

    def encode(self, video: VideoInputs, *, chunk_patches: int | None = None) -> VisualEmbeds:
        """Every rank encodes its temporal patches; all ranks get the whole video's embeddings."""
        if not self.active:
            return self.adapter.encode(video, chunk_patches=chunk_patches)
        shares = split_frames(self.adapter.temporal_length(video), self.mesh.sp_size)
        start, stop = shares[self.mesh.sp_rank]
        if stop > start:
            out = self.adapter.encode(self.adapter.slice_temporal(video, start, stop), chunk_patches=chunk_patches)
            mine = [out.embeds, *(out.deepstack or [])]
        else:  # fewer temporal patches than ranks: an empty share that still joins the collective
            mine = [self._empty_share() for _ in range(1 + self.adapter.deepstack_layers)]
        sizes = [self.adapter.num_visual_tokens(self.adapter.slice_temporal(video, a, b)) for a, b in shares]
        gathered = [gather_embeddings(part, self.mesh, sizes) for part in mine]  # embeddings, then DeepStack layers
        return video.embedded(gathered[0], gathered[1:] or None)

    def _empty_share(self) -> torch.Tensor:
        vision = self.adapter.parameter_groups()["vision"]
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in vision)
        return torch.zeros((0, self.adapter.hidden_size), dtype=self.adapter.dtype, device=self.adapter.device, requires_grad=grad)

    def shard(self, x: torch.Tensor, dim: int = 0, pad_value: float = 0) -> torch.Tensor:
        """This rank's part of a per-token tensor (labels: pad with -100)."""
        if not self.active:
            return x
        return shard_sequence(x, dim, self.mesh, self.layout, pad_value)[0]

    def hidden_states(
        self, embeds: torch.Tensor, positions: torch.Tensor, mask_fn: MaskFn = causal, *, deepstack=None
    ) -> torch.Tensor:
        """Final hidden states of this rank's tokens `[S_local, D]` for a `[S, D]` sequence
        (`deepstack`: the visual tokens' per-layer features, whole, for every shard)."""
        if not self.active:
            mask = None if mask_fn is causal else prepared_mask(mask_fn, len(embeds), embeds.device)
            return self.adapter.hidden_states(
                embeds[None], positions.unsqueeze(-2), attention_mask=mask, deepstack=deepstack
            )[0][0]
        local = self.shard(embeds)
        local_pos = self.shard(positions, dim=positions.dim() - 1)
        sharded = ShardedMask.from_layout(mask_fn, embeds.shape[0], self.mesh, self.layout)
        with self.adapter.language_attention(self.attention):
            hidden, _ = self.adapter.hidden_states(
                local[None], local_pos.unsqueeze(-2), sharded_mask=sharded, deepstack=deepstack
            )
        return hidden[0]

    def token_logprobs(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        mask_fn: MaskFn,
        source_index: torch.Tensor,
        targets: torch.Tensor,
        *,
        temperature: float = 1.0,
        deepstack=None,
    ) -> torch.Tensor:
        """Log-probs of `targets` predicted at sequence positions `source_index` (same shape).

        Each rank scores only the targets whose predicting position it holds and the scores are
        summed over the SP group: the LM head runs once per token across the group, and each rank's
        backward covers exactly its own tokens, so summing gradients over the group is exact.
        """
        hidden = self.hidden_states(embeds, positions, mask_fn, deepstack=deepstack)
        if not self.active:
            return token_logprobs(self.adapter, hidden[source_index], targets, temperature=temperature)
        held = shard_positions(embeds.shape[0], self.mesh.sp_size, self.layout)[self.mesh.sp_rank].to(hidden.device)
        row_of = torch.full((int(held.max()) + 1 + embeds.shape[0],), -1, dtype=torch.long, device=hidden.device)
        row_of[held] = torch.arange(len(held), device=hidden.device)
        rows = row_of[source_index]
        mine = rows >= 0
        scores = token_logprobs(self.adapter, hidden[rows[mine]], targets[mine], temperature=temperature)
        local = torch.zeros(targets.shape, dtype=scores.dtype, device=scores.device).masked_scatter(mine, scores)
        return _SumOverGroup.apply(local, self.mesh.sp_group)

    def all_reduce_grads(self, parameters, *, dp_mean: bool = False) -> None:
        """Sum gradients over the SP group (its ranks hold parts of one sequence), then sum them
        over data-parallel ranks (losses normalised by a global count) or average them (`dp_mean`,
        DDP's convention, for losses normalised per rank)."""
        if self.mesh.world_size == 1:
            return
        for p in parameters:
            if p.grad is None:
                continue
            if self.mesh.sp_size > 1:
                dist.all_reduce(p.grad, group=self.mesh.sp_group)
            if self.mesh.dp_size > 1:
                dist.all_reduce(p.grad, group=self.mesh.dp_group)
                if dp_mean:
                    p.grad.div_(self.mesh.dp_size)

    def barrier(self) -> None:
        if self.mesh.world_size > 1:
            dist.barrier()

    def all_reduce_sum(self, value: float, group=None) -> float:
        if self.mesh.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, group=group)
        return float(t)


class _SumOverGroup(torch.autograd.Function):
    """All-reduce sum whose backward passes the gradient through unchanged: every rank computes
    the same loss from the sum, and each rank's gradient belongs to its own summand only."""

    @staticmethod
    def forward(ctx, x, group):
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


__all__ = ["SequenceParallel", "IGNORE_INDEX"]
