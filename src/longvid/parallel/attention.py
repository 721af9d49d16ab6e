"""Sequence-parallel attention over any `mask_fn`: Ulysses, ring, and both (USP / LongVILA 2-D).

Tensors are `[B, S_local, H, D]`; every rank holds the tokens at the global positions given by a
`ShardedMask` (which also carries the `mask_fn`). Three ways to use the SP group:

- **ulysses** — all-to-all over the SP group: scatter heads, gather the sequence, attend locally
  over the full sequence, all-to-all back. Communication is O(S/P) per rank; P <= heads.
- **ring** — each rank keeps its queries; K/V blocks travel around the SP group; partial results
  are merged with the log-sum-exp rule. Any P; the mask is evaluated block by block on global
  positions and fully masked blocks are skipped (use the zigzag layout for causal balance).
- **hybrid** — Ulysses inside the mesh's (consecutive) Ulysses groups, ring across its (strided)
  ring groups.

The local work (inside Ulysses, at each ring step, and on a mesh of one) is a tiled, pure-torch
flash-style kernel: scores exist one `tile x tile` square at a time, masked squares are skipped,
backward recomputes them from the saved log-sum-exp — O(S * tile) memory, never S^2. On CUDA,
attention with no ring uses compiled `flex_attention` instead. `attention` is the plain
single-process reference (SDPA with a dense mask on CPU).

`register_sp_attention` plugs these into transformers' `AttentionInterface` so an unmodified
Hugging Face model runs sequence-parallel; see its docstring for how a caller passes the mask.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .. import masks
from ..errors import ConfigError
from ..masks import MaskFn
from .mesh import Mesh, check_heads
from .shard import shard_positions

MODES = ("ulysses", "ring", "hybrid")
TILE = 512  # tokens per side of one score tile in the pure-torch kernel


@dataclass(frozen=True)
class ShardedMask:
    """A `mask_fn` plus where every SP rank's tokens sit in the global sequence.

    `positions[r]` are the global positions held by SP rank r (`shard_positions`); positions at or
    past `seq_len` are padding. Called as a mask function it is `mask_fn` on real tokens; real
    tokens never see padding, and padding queries see only themselves (so no row is empty and
    no NaN can appear, whatever the backend).
    """

    mask_fn: MaskFn
    positions: torch.Tensor
    seq_len: int

    @classmethod
    def from_layout(cls, mask_fn: MaskFn, seq_len: int, mesh: Mesh, layout: str = "contiguous") -> ShardedMask:
        return cls(mask_fn, shard_positions(seq_len, mesh.sp_size, layout), seq_len)

    def __call__(self, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        last = self.seq_len - 1
        inside = self.mask_fn(q_idx.clamp(max=last), kv_idx.clamp(max=last)) & (kv_idx <= last)
        return torch.where(q_idx <= last, inside, q_idx == kv_idx)


# ------------------------------------------------------------------------------------------------
# Single-process attention: the reference, and the local kernel on CUDA
# ------------------------------------------------------------------------------------------------
@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # dynamic=None: the first length compiles static, a second marks lengths dynamic. With
    # dynamic=False every new length (each GRPO step has its own) recompiles, and past dynamo's
    # recompile limit (8 in torch 2.13) flex falls back to eager, which materialises the scores.
    return torch.compile(flex_attention, dynamic=None)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask_fn: MaskFn,
    scale: float | None = None,
    q_positions: torch.Tensor | None = None,
    kv_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of `[B, Sq, H, D]` queries over `[B, Skv, Hkv, D]` keys/values, in one process.

    `mask_fn` is evaluated at the given global positions (default `0..S-1`). GQA when Hkv < H.
    CPU: SDPA with a dense boolean mask. CUDA: compiled `flex_attention` with a `BlockMask`, which
    skips masked tiles and never materialises the S x S mask.
    """
    device = q.device
    qp = torch.arange(q.shape[1], device=device) if q_positions is None else q_positions.to(device)
    kp = torch.arange(k.shape[1], device=device) if kv_positions is None else kv_positions.to(device)
    gqa = q.shape[2] != k.shape[2]
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    if q.is_cuda:
        block = masks.block_mask(lambda qi, ki: mask_fn(qp[qi], kp[ki]), len(qp), len(kp), device=device)
        out = _compiled_flex()(qh, kh, vh, block_mask=block, scale=scale, enable_gqa=gqa)
    else:
        dense = masks.dense_mask(mask_fn, len(qp), len(kp), q_positions=qp, kv_positions=kp)
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=dense, scale=scale, enable_gqa=gqa)
    return out.transpose(1, 2)


# ------------------------------------------------------------------------------------------------
# Ulysses: all-to-all between sequence and heads
# ------------------------------------------------------------------------------------------------
def _all_to_all(x: torch.Tensor, scatter_dim: int, gather_dim: int, group) -> torch.Tensor:
    """Split `scatter_dim` into P pieces, send piece i to rank i, concatenate what arrives on `gather_dim`.

    For `[B, S/P, H, D]` with scatter 2 and gather 1 this is REFERENCE.md's
    reshape(B, S/P, P, H/P, D) -> all_to_all_single -> reshape(B, S, H/P, D).
    """
    size = dist.get_world_size(group)
    send = torch.stack(x.chunk(size, dim=scatter_dim)).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return torch.cat(recv.unbind(0), dim=gather_dim)


class _AllToAll(torch.autograd.Function):
    """The all-to-all with its mirror as backward."""

    @staticmethod
    def forward(ctx, x, scatter_dim, gather_dim, group):
        ctx.dims, ctx.group = (scatter_dim, gather_dim), group
        return _all_to_all(x, scatter_dim, gather_dim, group)

    @staticmethod
    def backward(ctx, grad):
        scatter_dim, gather_dim = ctx.dims
        return _all_to_all(grad, gather_dim, scatter_dim, ctx.group), None, None, None


# ------------------------------------------------------------------------------------------------
# Ring: K/V travel, partial results merged with log-sum-exp
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Ring:
    """A ring of processes: `peers` are global ranks in ring order, `index` is ours."""

    group: object
    peers: tuple[int, ...]
    index: int

    @property
    def size(self) -> int:
        return len(self.peers)

    def shift(self, tensors):
        """Send `tensors` to the next rank and receive the previous rank's; returns a waiter."""
        nxt, prv = self.peers[(self.index + 1) % self.size], self.peers[(self.index - 1) % self.size]
        sent = [t.contiguous() for t in tensors]  # kept alive until the transfer is done
        received = [torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in tensors]
        ops = [dist.P2POp(dist.isend, t, nxt, self.group) for t in sent]
        ops += [dist.P2POp(dist.irecv, r, prv, self.group) for r in received]
        works = dist.batch_isend_irecv(ops)

        def wait():
            for w in works:
                w.wait()
            del sent[:]
            return received

        return wait


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax statistics and partial outputs in at least float32."""
    return torch.promote_types(dtype, torch.float32)


def _finite(x: torch.Tensor) -> torch.Tensor:
    """-inf (an empty row) as 0, so `exp(s - lse)` gives 0 instead of NaN."""
    return torch.where(torch.isinf(x), torch.zeros_like(x), x)


def _rows(x: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """`[B, S, H, D]` -> `[B, Hkv, S * G, D]`: the G query heads sharing a KV head become rows.

    Rows are position-major (row = s * G + g), so a tile of positions is a contiguous slice and
    one plain batched matmul against `[B, Hkv, Skv, D]` keys serves the whole group (GQA
    without repeating K/V; dK/dV sum over the group inside the matmul).
    """
    b, s, h, d = x.shape
    return x.reshape(b, s, kv_heads, h // kv_heads, d).permute(0, 2, 1, 3, 4).reshape(b, kv_heads, -1, d)


def _unrows(x: torch.Tensor, seq: int) -> torch.Tensor:
    """Inverse of `_rows`: `[B, Hkv, S * G, D]` -> `[B, S, H, D]`."""
    b, hkv, rows, d = x.shape
    g = rows // seq
    return x.reshape(b, hkv, seq, g, d).permute(0, 2, 1, 3, 4).reshape(b, seq, hkv * g, d)


def _tiles(n: int, size: int):
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def _tile_masks(q_pos, kv_pos, mask_fn, tile, group):
    """Per (q tile, kv tile): the mask repeated for the G row-heads, None if all visible; hidden tiles skipped."""
    for qs, qe in _tiles(len(q_pos), tile):
        for ks, ke in _tiles(len(kv_pos), tile):
            mask = mask_fn(q_pos[qs:qe, None], kv_pos[None, ks:ke])
            if not mask.any():
                continue
            rows = None if mask.all() else mask.repeat_interleave(group, dim=0)
            yield slice(qs * group, qe * group), slice(ks, ke), rows


def _tile_forward(q, k, v, q_pos, kv_pos, mask_fn, scale, out, lse, tile):
    """Fold attention of rows `q` over one K/V block into the running `(out, lse)`, tile by tile.

    Scores exist for one tile square at a time; squares the mask hides are skipped, and a row
    hidden within a square gets lse -inf and contributes nothing (never NaN).
    """
    acc = out.dtype
    group = q.shape[-2] // len(q_pos)
    for rows, cols, mask in _tile_masks(q_pos, kv_pos, mask_fn, tile, group):
        # In place where possible: the score tile is the kernel's largest temporary.
        s = torch.matmul(q[..., rows, :], k[..., cols, :].transpose(-1, -2)).to(acc).mul_(scale)
        if mask is not None:
            s.masked_fill_(~mask, float("-inf"))
        m, m_b = lse[..., rows], torch.logsumexp(s, dim=-1)
        o_b = torch.matmul(s.sub_(_finite(m_b).unsqueeze(-1)).exp_(), v[..., cols, :].to(acc))
        merged = torch.logaddexp(m, m_b)  # the log-sum-exp merge of two partial softmaxes
        safe = _finite(merged).unsqueeze(-1)
        old = torch.exp(m.unsqueeze(-1) - safe) * out[..., rows, :]
        out[..., rows, :] = old + torch.exp(m_b.unsqueeze(-1) - safe) * o_b
        lse[..., rows] = merged


def _tile_backward(q, k, v, do, delta, lse, q_pos, kv_pos, mask_fn, scale, dq, dk, dv, tile):
    """Add one K/V block's share to dQ and that block's dK/dV, recomputing P from the saved lse.

    dP = dO V^T, dS = P * (dP - rowsum(dO * O)), dQ = dS K scale, dK = dS^T Q scale, dV = P^T dO.
    """
    acc = q.dtype
    group = q.shape[-2] // len(q_pos)
    for rows, cols, mask in _tile_masks(q_pos, kv_pos, mask_fn, tile, group):
        q_t, do_t = q[..., rows, :], do[..., rows, :]
        k_t, v_t = k[..., cols, :].to(acc), v[..., cols, :].to(acc)
        p = torch.matmul(q_t, k_t.transpose(-1, -2)).mul_(scale).sub_(lse[..., rows, :]).exp_()
        if mask is not None:
            p.masked_fill_(~mask, 0.0)
        ds = torch.matmul(do_t, v_t.transpose(-1, -2)).sub_(delta[..., rows, :]).mul_(p)
        dq[..., rows, :] += torch.matmul(ds, k_t).mul_(scale)
        dk[..., cols, :] += torch.matmul(ds.transpose(-1, -2), q_t).mul_(scale)
        dv[..., cols, :] += torch.matmul(p.transpose(-1, -2), do_t)


class _RingAttention(torch.autograd.Function):
    """Tiled attention whose K/V blocks travel around a ring (a ring of one is local attention).

    Forward: at step t this rank holds the K/V block of ring rank (index - t); while it folds that
    block into its running output, the block moves on to the next rank. Only q, k, v, the output
    and the log-sum-exp are saved. Backward: K/V travel the same way again; probabilities are
    recomputed from the saved log-sum-exp, and each block's dK/dV accumulators travel with it,
    one hop behind the forward order, arriving home after the last step.
    """

    @staticmethod
    def forward(ctx, q, k, v, mask_fn, scale, blocks, ring, tile):
        acc = _acc_dtype(q.dtype)
        hkv = k.shape[2]
        qr = _rows(q, hkv)
        kv = [k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()]
        out = qr.new_zeros((*qr.shape[:-1], v.shape[-1]), dtype=acc)
        lse = qr.new_full(qr.shape[:-1], float("-inf"), dtype=acc)
        q_pos = blocks[ring.index]
        for step in range(ring.size):
            arriving = ring.shift(kv) if step < ring.size - 1 else None
            kv_pos = blocks[(ring.index - step) % ring.size]
            _tile_forward(qr, kv[0], kv[1], q_pos, kv_pos, mask_fn, scale, out, lse, tile)
            if arriving is not None:
                kv = arriving()
        ctx.save_for_backward(q, k, v, out, lse, blocks)
        ctx.mask_fn, ctx.scale, ctx.ring, ctx.tile = mask_fn, scale, ring, tile
        return _unrows(out, q.shape[1]).to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, blocks = ctx.saved_tensors
        ring = ctx.ring
        acc = out.dtype
        hkv = k.shape[2]
        qr = _rows(q, hkv).to(acc)
        do = _rows(grad_out, hkv).to(acc)
        delta = (do * out).sum(-1, keepdim=True)  # rowsum(dO * O)
        lse = _finite(lse).unsqueeze(-1)
        q_pos = blocks[ring.index]
        kv = [k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()]
        dq = torch.zeros_like(qr)
        dkv = [torch.zeros_like(kv[0], dtype=acc), torch.zeros_like(kv[1], dtype=acc)]
        for step in range(ring.size):
            arriving = ring.shift(kv) if step < ring.size - 1 else None
            kv_pos = blocks[(ring.index - step) % ring.size]
            _tile_backward(qr, kv[0], kv[1], do, delta, lse, q_pos, kv_pos, ctx.mask_fn, ctx.scale, dq, *dkv, ctx.tile)
            if ring.size > 1:  # this block's dK/dV go where the block goes next; the last hop is home
                dkv = ring.shift(dkv)()
            if arriving is not None:
                kv = arriving()
        dk, dv = (g.transpose(1, 2).to(t.dtype) for g, t in zip(dkv, (k, v)))
        return _unrows(dq, q.shape[1]).to(q.dtype), dk, dv, None, None, None, None, None


# ------------------------------------------------------------------------------------------------
# The three modes
# ------------------------------------------------------------------------------------------------
def _plan(mesh: Mesh, mode: str):
    """(Ulysses group, its size, ring) for `mode` on `mesh`; the ring may be this rank alone."""
    if mode not in MODES:
        raise ConfigError(f"unknown sequence-parallel attention mode {mode!r}; expected one of {MODES}")
    alone = _Ring(None, (mesh.rank,), 0)
    sp = mesh.sp_size
    if sp == 1:
        return None, 1, alone
    if mode == "ulysses":
        return mesh.sp_group, sp, alone
    if mode == "ring":
        return None, 1, _Ring(mesh.sp_group, tuple(mesh.sp_global_rank(r) for r in range(sp)), mesh.sp_rank)
    u, r = mesh.ulysses_size, mesh.ring_size
    peers = tuple(mesh.sp_global_rank(j * u + mesh.ulysses_rank) for j in range(r))
    ring = _Ring(mesh.ring_group, peers, mesh.ring_rank) if r > 1 else alone
    return (mesh.ulysses_group if u > 1 else None), u, ring


def sp_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: ShardedMask,
    mesh: Mesh,
    mode: str = "hybrid",
    scale: float | None = None,
    tile: int = TILE,
) -> torch.Tensor:
    """Attention of this rank's `[B, S_local, H, D]` shard over the whole sequence.

    `mode` picks how the SP group is used: "ulysses" (all-to-all over it), "ring" (a ring over it)
    or "hybrid" (the mesh's Ulysses x ring split). Local work is the tiled kernel (`tile` tokens a
    side, O(S * tile) memory instead of S^2), or compiled flex_attention on CUDA when no ring
    is involved. On a mesh of one this is single-process attention.
    """
    if mask.positions.shape != (mesh.sp_size, q.shape[1]):
        raise ConfigError(
            f"sharded_mask positions {tuple(mask.positions.shape)} do not fit sp={mesh.sp_size} "
            f"ranks of {q.shape[1]} tokens: build it for this mesh and sequence"
        )
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    uly_group, u, ring = _plan(mesh, mode)
    check_heads(q.shape[2], k.shape[2], u)
    # Ring block j (after the all-to-all) is the concatenation of its Ulysses members' shards.
    blocks = mask.positions.to(q.device).reshape(ring.size, -1)
    if u > 1:
        if k.shape[2] < u:  # fewer KV heads than ranks: repeat them (autograd sums their grads)
            k, v = (t.repeat_interleave(u // k.shape[2], dim=2) for t in (k, v))
        q, k, v = (_AllToAll.apply(t, 2, 1, uly_group) for t in (q, k, v))
    if ring.size == 1 and q.is_cuda:
        mine = blocks[0]
        out = attention(q, k, v, mask, scale, q_positions=mine, kv_positions=mine)
    else:
        out = _RingAttention.apply(q, k, v, mask, scale, blocks, ring, tile)
    if u > 1:
        out = _AllToAll.apply(out, 1, 2, uly_group)
    return out


def ulysses_attention(q, k, v, mask: ShardedMask, mesh: Mesh, scale: float | None = None) -> torch.Tensor:
    return sp_attention(q, k, v, mask, mesh, "ulysses", scale)


def ring_attention(q, k, v, mask: ShardedMask, mesh: Mesh, scale: float | None = None) -> torch.Tensor:
    return sp_attention(q, k, v, mask, mesh, "ring", scale)


def hybrid_attention(q, k, v, mask: ShardedMask, mesh: Mesh, scale: float | None = None) -> torch.Tensor:
    return sp_attention(q, k, v, mask, mesh, "hybrid", scale)


# ------------------------------------------------------------------------------------------------
# Hugging Face integration
# ------------------------------------------------------------------------------------------------
FLEX_ATTENTION = "longvid_flex"


def _flex_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention signature (`[B, H, S, D]` in, `[B, S, H, D]` out) over FlexAttention
    with the `BlockMask` passed as `attention_mask`: compiled on CUDA, eager elsewhere (eager flex
    runs forward only; its backward is not implemented on CPU)."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    if not isinstance(attention_mask, BlockMask):
        raise ConfigError(f"attention {FLEX_ATTENTION!r} needs a BlockMask (from attention_for), got {type(attention_mask).__name__}")
    if dropout or kwargs.get("sliding_window") is not None:
        raise ConfigError(f"attention {FLEX_ATTENTION!r} supports neither dropout nor sliding windows")
    flex = _compiled_flex() if query.is_cuda else flex_attention
    gqa = query.shape[1] != key.shape[1]
    out = flex(query, key, value, block_mask=attention_mask, scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None


@functools.cache
def register_flex_attention() -> str:
    """Register the FlexAttention function with transformers (once); returns its name.

    transformers 5.24 refuses `attn_implementation="flex_attention"` for Qwen2.5-VL's text model,
    but any function registered through `AttentionInterface` may be selected for it."""
    from transformers import AttentionInterface

    AttentionInterface.register(FLEX_ATTENTION, _flex_attention_forward)
    return FLEX_ATTENTION


def attention_for(mask_fn: MaskFn, length: int, device: torch.device, *, flex: bool | None = None):
    """The attention implementation and the mask it takes, chosen together for a `length` sequence.

    Returns `(name, mask)`: `(FLEX_ATTENTION, BlockMask)` where FlexAttention runs well (CUDA, or
    `flex=True` to force it), else `(None, dense bool [1, 1, S, S])` for the model's own SDPA/eager
    implementation. A caller runs the language model with `name` when it is not None
    (`adapter.language_attention(name)`), so a block mask never reaches SDPA.
    """
    device = torch.device(device)
    use_flex = device.type == "cuda" if flex is None else flex
    if use_flex:
        return register_flex_attention(), masks.block_mask(mask_fn, length, length, device=device)
    return None, masks.prepared_mask(mask_fn, length, device)


def register_sp_attention(mesh: Mesh, mode: str = "hybrid", tile: int = TILE) -> str:
    """Register sequence-parallel attention with transformers; returns the implementation name.

    Use it on the language model only (the vision tower is frame-sharded and attends locally):

        name = register_sp_attention(mesh, "hybrid")
        model.set_attn_implementation({"text_config": name})   # or (name) for a text-only model
        out = model(inputs_embeds=x_local, position_ids=pos_local,
                    sharded_mask=ShardedMask.from_layout(mask_fn, seq_len, mesh, layout),
                    use_cache=False)

    The `sharded_mask` keyword rides through the model's `**kwargs` to every attention call,
    which keeps it explicit and makes it survive activation checkpointing (a context manager
    would have exited by the time checkpointed layers recompute in backward). transformers builds
    no mask for an implementation it has no mask function for, so the model's own causal mask is
    skipped without touching its code — and a 2-D padding `attention_mask` would be dropped too:
    express every pattern (padding, packing) in the `mask_fn`. Pass `use_cache=False`: decoding
    from a sharded prefill is not handled here.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown sequence-parallel attention mode {mode!r}; expected one of {MODES}")
    from transformers import AttentionInterface

    name = f"longvid_sp_{mode}"

    def sp_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        mask = kwargs.get("sharded_mask")
        if not isinstance(mask, ShardedMask):
            raise ConfigError(
                f"attention {name!r} needs `sharded_mask=ShardedMask(...)` in the model call; "
                "set it on the language model only (e.g. set_attn_implementation({'text_config': name}))"
            )
        if attention_mask is not None:
            raise ConfigError(f"attention {name!r} takes its mask from `sharded_mask`, not `attention_mask`")
        if dropout or kwargs.get("sliding_window") is not None:
            raise ConfigError(f"attention {name!r} supports neither dropout nor sliding windows")
        out = sp_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), mask, mesh, mode, scaling, tile
        )
        return out.contiguous(), None

    AttentionInterface.register(name, sp_attention_forward)
    return name
