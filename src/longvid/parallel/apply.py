"""Sequence parallelism applied to an adapter from outside (the model's code is untouched).

`SequenceParallel` runs one long sample across the ranks of an SP group in two stages:
- the vision tower by frames: each rank encodes its share of temporal patches, the embeddings are
  all-gathered (exact: an adapter's temporal units are ones its encoder never attends across);
- the language model by tokens: the `[prompt | response]` sequence is sharded (zigzag by default),
  attention runs through the registered Ulysses / ring / hybrid implementation with the sequence's
  `mask_fn` evaluated on global positions.
On a mesh of one it is the plain single-process path, so trainers never special-case it.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.distributed as dist

from ..masks import MaskFn, causal
from ..model.adapter import VideoInputs, VisualEmbeds, VLMAdapter
from ..model.common import token_logprobs
from .attention import ShardedMask, attention_for, register_sp_attention
from .mesh import Mesh, check_heads
from .shard import IGNORE_INDEX, gather_embeddings, reduce_replicated_grads, shard_positions, shard_sequence, split_frames


class SequenceParallel:
    def __init__(
        self, adapter: VLMAdapter, mesh: Mesh, *, mode: str = "hybrid", layout: str = "zigzag", sharded: bool = False
    ):
        """`sharded`: the adapter's parameters are FSDP-sharded over the mesh, so every rank must
        call each module the same number of times (see `encode` and `token_logprobs`)."""
        self.adapter, self.mesh, self.layout, self.sharded = adapter, mesh, layout, sharded
        self.gathered = False  # inside `full_parameters`: module calls make no collectives
        self.reshard_after_forward = True
        self.attention = None
        if mesh.sp_size > 1:
            ulysses = {"ulysses": mesh.sp_size, "ring": 1}.get(mode, mesh.ulysses_size)
            check_heads(*adapter.attention_heads, ulysses)
            self.attention = register_sp_attention(mesh, mode)

    @property
    def active(self) -> bool:
        return self.mesh.sp_size > 1

    @property
    def tower_sharded(self) -> bool:
        """Whether the vision tower's calls are collectives across the whole mesh (FSDP-sharded
        parameters; frozen parameters stay replicated, see `parallelize.apply_fsdp`)."""
        return self.sharded and not self.gathered and any(p.requires_grad for p in self.adapter.parameter_groups()["vision"])

    @contextlib.contextmanager
    def full_parameters(self):
        """Inside: every FSDP module holds its whole parameters and calls make no parameter
        collectives, so ranks may make different numbers of calls (a decode loop whose length
        differs between data-parallel ranks, an embedding-cache miss on one rank). Outside: sharded
        again. Costs the memory of the whole model; a no-op without FSDP."""
        if not self.sharded or self.gathered:
            yield
            return
        from torch.distributed.fsdp import FSDPModule

        modules = [m for m in self.adapter.model.modules() if isinstance(m, FSDPModule)]
        for m in modules:
            m.unshard()
            m.set_reshard_after_forward(False, recurse=False)
        self.gathered = True
        try:
            yield
        finally:
            self.gathered = False
            for m in modules:
                m.reshard()
                m.set_reshard_after_forward(self.reshard_after_forward, recurse=False)

    def encode(self, video: VideoInputs, *, chunk_patches: int | None = None) -> VisualEmbeds:
        """Every rank encodes its temporal patches; all ranks get the whole video's embeddings.

        Every rank makes the same number of vision-tower calls, whatever its share: a rank with
        fewer (or no) temporal patches runs the tower on one zero temporal unit whose rows it drops.
        A sharded tower all-gathers its blocks in each call and a trainable one reduces gradients
        in each backward, so unequal call counts would leave ranks waiting on different collectives.
        """
        if not self.active and not self.tower_sharded:
            return self.adapter.encode(video, chunk_patches=chunk_patches)
        shares = split_frames(self.adapter.temporal_length(video), self.mesh.sp_size)
        start, stop = shares[self.mesh.sp_rank]
        step = chunk_patches or max(b - a for a, b in shares)
        calls = max(-(-(b - a) // step) for a, b in shares)
        if self.tower_sharded:  # data-parallel ranks encode other videos: agree on the most calls
            calls = int(self.all_reduce_max(calls, self.mesh.group("dp")))
        parts = []  # per call: [embeddings, DeepStack layer 1, ...]
        for i in range(calls):
            a, b = start + i * step, min(start + (i + 1) * step, stop)
            out = self.adapter.encode(self.adapter.slice_temporal(video, a, b)) if b > a else self._idle_call(video)
            parts.append([out.embeds, *(out.deepstack or [])])
        mine = [torch.cat(layer) for layer in zip(*parts)]
        sizes = [self.adapter.num_visual_tokens(self.adapter.slice_temporal(video, a, b)) for a, b in shares]
        gathered = [gather_embeddings(part, self.mesh, sizes) for part in mine]  # embeddings, then DeepStack layers
        return video.embedded(gathered[0], gathered[1:] or None)

    def _idle_call(self, video: VideoInputs) -> VisualEmbeds:
        """A real tower call on one zero temporal unit, no rows kept: its forward joins the
        all-gathers and its backward (zero gradients) joins the reductions of the other ranks."""
        unit = self.adapter.slice_temporal(video, 0, 1)
        zeros = dataclasses.replace(unit, pixel_values=torch.zeros_like(unit.pixel_values))
        out = self.adapter.encode(zeros)
        return dataclasses.replace(out, embeds=out.embeds[:0], deepstack=[d[:0] for d in out.deepstack] if out.deepstack else None)

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
            if mask_fn is causal:  # the model's own causal path
                return self.adapter.hidden_states(embeds[None], positions.unsqueeze(-2), deepstack=deepstack)[0][0]
            implementation, mask = attention_for(mask_fn, len(embeds), embeds.device)
            with self.adapter.language_attention(implementation) if implementation else contextlib.nullcontext():
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
        if not self.active and not self.sharded:
            return token_logprobs(self.adapter, hidden[source_index], targets, temperature=temperature)
        held = shard_positions(embeds.shape[0], self.mesh.sp_size, self.layout)[self.mesh.sp_rank].to(hidden.device)
        row_of = torch.full((int(held.max()) + 1 + embeds.shape[0],), -1, dtype=torch.long, device=hidden.device)
        row_of[held] = torch.arange(len(held), device=hidden.device)
        rows = row_of[source_index]
        mine = rows >= 0
        picked, picked_targets = hidden[rows[mine]], targets[mine]
        if self.sharded and not self.gathered:
            # The LM head is called once per chunk of rows: pad to the mesh's largest row count so
            # every rank makes as many (collective) calls; padded rows are scored and dropped.
            most = int(self.all_reduce_max(len(picked), self.mesh.group("dp_sp")))
            picked = torch.cat([picked, picked.new_zeros(most - len(picked), picked.shape[-1])])
            picked_targets = torch.cat([picked_targets, picked_targets.new_zeros(most - len(picked_targets))])
        scores = token_logprobs(self.adapter, picked, picked_targets, temperature=temperature)[: int(mine.sum())]
        local = torch.zeros(targets.shape, dtype=scores.dtype, device=scores.device).masked_scatter(mine, scores)
        return _SumOverGroup.apply(local, self.mesh.sp_group) if self.active else local

    def all_reduce_grads(self, parameters, *, dp_mean: bool = False) -> None:
        """Gradient reduction of replicated (not FSDP-sharded) parameters; see `parallelize.reduce_replicated_grads`."""
        reduce_replicated_grads(parameters, self.mesh, dp_mean=dp_mean)

    def barrier(self) -> None:
        if self.mesh.world_size > 1:
            dist.barrier()

    def all_reduce_sum(self, value: float, group=None) -> float:
        return self._all_reduce(value, group, dist.ReduceOp.SUM)

    def all_reduce_max(self, value: float, group=None) -> float:
        return self._all_reduce(value, group, dist.ReduceOp.MAX)

    def _all_reduce(self, value: float, group, op) -> float:
        if self.mesh.world_size == 1:
            return value
        # On the mesh's device: NCCL reduces only CUDA tensors.
        t = torch.tensor([value], dtype=torch.float64, device=self.mesh.device)
        dist.all_reduce(t, op=op, group=group)
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
