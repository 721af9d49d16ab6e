"""Moving one long sample across the sequence-parallel group: split, pad, gather, reduce.

Two stages, as in LongVILA's MM-SP and Long-RL's MR-SP:

- Encoder stage: a video's temporal patches are split across SP ranks (`split_frames`), each rank
  encodes its share, and `gather_embeddings` all-gathers the uneven shares into the whole video.
- LLM stage: the spliced sequence is sharded along tokens (`shard_sequence`, contiguous or zigzag),
  every rank runs the model on its shard with sequence-parallel attention, and the loss is reduced
  from per-rank `(sum, count)` (`sharded_loss`); labels are shifted over the whole sequence first
  (`shift_labels`), never inside a shard.

Every function is a no-op (or a plain local computation) on a mesh of one process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..errors import ConfigError
from .mesh import Mesh

LAYOUTS = ("contiguous", "zigzag")
IGNORE_INDEX = -100


# ------------------------------------------------------------------------------------------------
# Encoder stage
# ------------------------------------------------------------------------------------------------
def split_frames(num_temporal_patches: int, sp_size: int) -> list[tuple[int, int]]:
    """Balanced `[start, stop)` ranges of temporal patches, one per SP rank.

    The first `n % sp_size` ranks take one more patch; with fewer patches than ranks the last
    ranks get empty ranges. Splitting on temporal-patch boundaries keeps the Conv3d patch embedding
    (which spans `temporal_patch_size` frames) inside one rank.
    """
    if num_temporal_patches < 0 or sp_size < 1:
        raise ConfigError(f"cannot split {num_temporal_patches} temporal patches over {sp_size} ranks")
    base, extra = divmod(num_temporal_patches, sp_size)
    bounds = [0]
    for r in range(sp_size):
        bounds.append(bounds[-1] + base + (1 if r < extra else 0))
    return list(zip(bounds[:-1], bounds[1:]))


class _GatherRows(torch.autograd.Function):
    """All-gather uneven row blocks; backward reduce-scatters (sums) the gradient over ranks.

    Summing is right here because after the gather each rank uses the embeddings for a different
    part of the total loss (its sequence shard): the gradient of a rank's rows is the sum of every
    rank's contribution.
    """

    @staticmethod
    def forward(ctx, x, sizes, group):
        ctx.sizes, ctx.group = sizes, group
        longest = max(sizes)
        padded = _pad_dim(x, 0, longest, 0)
        out = x.new_empty((len(sizes) * longest, *x.shape[1:]))
        dist.all_gather_single(out, padded.contiguous(), group=group)
        return torch.cat([out[r * longest : r * longest + n] for r, n in enumerate(sizes)])

    @staticmethod
    def backward(ctx, grad):
        sizes, longest = ctx.sizes, max(ctx.sizes)
        parts = [_pad_dim(g, 0, longest, 0) for g in grad.split(sizes)]
        out = grad.new_empty((longest, *grad.shape[1:]))
        dist.reduce_scatter_single(out, torch.cat(parts).contiguous(), group=ctx.group)
        return out[: sizes[dist.get_rank(ctx.group)]], None, None


def gather_embeddings(x: torch.Tensor, mesh: Mesh, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate every SP rank's rows `[n_r, ...]` in rank order: `[sum(n_r), ...]` on all ranks.

    gloo cannot all-gather uneven sizes, so shares are padded to the longest, gathered, unpadded.
    `sizes` (rows per SP rank) saves one small collective when the caller knows them.

    Autograd: the backward sums gradients over ranks (reduce-scatter), which is correct when each
    rank then backpropagates its own part of the loss (e.g. its sequence shard). The backward is a
    collective: if one rank needs the gradient, every rank must backpropagate through this call
    (give an empty share `requires_grad=True` too). A frozen encoder (RL) calls it under no_grad.
    """
    group = mesh.sp_group
    if mesh.sp_size == 1:
        return x
    if sizes is None:
        n = torch.tensor([x.shape[0]], device=x.device)
        all_n = n.new_empty(mesh.sp_size)
        dist.all_gather_single(all_n, n, group=group)
        sizes = all_n.tolist()
    if len(sizes) != mesh.sp_size or sizes[mesh.sp_rank] != x.shape[0]:
        raise ConfigError(f"rows per rank {sizes} do not match this rank's {x.shape[0]} rows")
    return _GatherRows.apply(x, list(sizes), group)


# ------------------------------------------------------------------------------------------------
# LLM stage
# ------------------------------------------------------------------------------------------------
def shard_positions(seq_len: int, sp_size: int, layout: str = "contiguous") -> torch.Tensor:
    """Global positions held by every SP rank: LongTensor `[sp_size, local_len]`.

    The sequence is padded to a multiple of `sp_size` (contiguous) or `2 * sp_size` (zigzag);
    positions `>= seq_len` are padding. Zigzag cuts 2P chunks and gives rank r chunks r and
    2P-1-r, so every rank holds the same amount of causal work.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown sequence layout {layout!r}; expected one of {LAYOUTS}")
    chunks = sp_size if layout == "contiguous" else 2 * sp_size
    padded = -(-seq_len // chunks) * chunks
    pos = torch.arange(padded).view(chunks, -1)
    if layout == "zigzag":
        pos = torch.cat([pos[:sp_size], pos[sp_size:].flip(0)], dim=1)
    return pos


def shard_sequence(
    x: torch.Tensor, dim: int, mesh: Mesh, layout: str = "contiguous", pad_value: float = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's shard of `x` along `dim`, padded with `pad_value`, and the global positions it holds.

    Pad labels with -100 (`pad_value=IGNORE_INDEX`) so padding carries no target. Differentiable:
    the gradient of `x` is this rank's part only (sum it over the SP group).
    """
    positions = shard_positions(x.shape[dim], mesh.sp_size, layout)
    local = positions[mesh.sp_rank]
    padded = _pad_dim(x, dim, positions.numel(), pad_value)
    return padded.index_select(dim, local.to(x.device)), local


class _GatherSequence(torch.autograd.Function):
    """All-gather equal shards and put them in global order; backward takes this rank's slice.

    Every rank ends up with the same full tensor and (typically) computes the same function of
    it, so each rank's gradient is already the whole gradient: summing it over ranks, as
    `torch.distributed.nn.all_gather` does, would count it P times.
    """

    @staticmethod
    def forward(ctx, x, dim, positions, group):
        ctx.dim, ctx.local = dim, positions[dist.get_rank(group)].to(x.device)
        moved = x.movedim(dim, 0).contiguous()
        out = moved.new_empty((positions.numel(), *moved.shape[1:]))
        dist.all_gather_single(out, moved, group=group)
        full = torch.empty_like(out).index_copy_(0, positions.flatten().to(x.device), out)
        return full.movedim(0, dim)

    @staticmethod
    def backward(ctx, grad):
        return grad.index_select(ctx.dim, ctx.local), None, None, None


def unshard(x: torch.Tensor, dim: int, mesh: Mesh, seq_len: int, layout: str = "contiguous") -> torch.Tensor:
    """Inverse of `shard_sequence`: the whole `[.., seq_len, ..]` tensor on every SP rank."""
    if mesh.sp_size == 1:
        return x.narrow(dim, 0, seq_len)
    positions = shard_positions(seq_len, mesh.sp_size, layout)
    return _GatherSequence.apply(x, dim, positions, mesh.sp_group).narrow(dim, 0, seq_len)


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Next-token targets over the WHOLE sequence `[B, S]`: position i is trained to predict i+1.

    Shift before sharding: shifting inside a shard loses one target per shard boundary and gives
    wrong targets under the zigzag layout.
    """
    return F.pad(labels, (0, 1), value=ignore_index)[:, 1:]


def sharded_loss(
    logits: torch.Tensor, labels: torch.Tensor, mesh: Mesh, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Token-mean cross-entropy of the whole sequence from this rank's shard of already-shifted labels.

    The value is the global mean (all-reduced `(sum, count)`) on every rank. The gradient is this
    rank's share, `d(local_sum)/N`: summing parameter gradients over the SP group (see
    `all_reduce_grads`) gives the gradient of the global mean. With FSDP/DDP averaging over the
    SP ranks instead of summing, scale the divide factor accordingly.
    """
    acc = torch.promote_types(logits.dtype, torch.float32)
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).to(acc), labels.reshape(-1), ignore_index=ignore_index, reduction="sum"
    )
    count = (labels != ignore_index).sum().to(acc)
    stats = torch.stack([total.detach(), count])
    if mesh.sp_size > 1:
        dist.all_reduce(stats, group=mesh.sp_group)
    # value: the global sum; gradient: only the local sum's.
    global_total = total + (stats[0] - total.detach())
    return global_total / stats[1].clamp(min=1)


def all_reduce_grads(parameters, mesh: Mesh) -> None:
    """Sum `.grad` of `parameters` over the SP group (the plain path without FSDP)."""
    if mesh.sp_size == 1:
        return
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad, group=mesh.sp_group)


def reduce_replicated_grads(parameters, mesh: Mesh, *, dp_mean: bool = False) -> None:
    """Gradient reduction of replicated parameters (all of them with FSDP off; under FSDP those kept
    outside it, e.g. visual summary tokens — the same sums as FSDP's): sum over the SP group (its
    ranks hold parts of one sequence), then sum over data-parallel ranks (losses normalised by a
    global count) or average (`dp_mean`, DDP's convention, for losses normalised per rank)."""
    if mesh.world_size == 1:
        return
    parameters = list(parameters)
    # A parameter can have a gradient on some ranks only (visual summary tokens absent from one
    # rank's tokens): agree on which have one, so every rank makes the same collectives.
    held = torch.tensor([p.grad is not None for p in parameters], dtype=torch.float32, device=mesh.device)
    dist.all_reduce(held, op=dist.ReduceOp.MAX)
    for p, anywhere in zip(parameters, held.tolist()):
        if p.grad is None and anywhere:
            p.grad = torch.zeros_like(p)
    for p in parameters:
        if p.grad is None:
            continue
        if mesh.sp_size > 1:
            dist.all_reduce(p.grad, group=mesh.sp_group)
        if mesh.dp_size > 1:
            dist.all_reduce(p.grad, group=mesh.dp_group)
            if dp_mean:
                p.grad.div_(mesh.dp_size)


def _pad_dim(x: torch.Tensor, dim: int, length: int, value: float) -> torch.Tensor:
    """`x` padded with `value` at the end of `dim` to `length`."""
    extra = length - x.shape[dim]
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x, x.new_full(shape, value)], dim=dim)
