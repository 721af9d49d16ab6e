"""Ulysses, ring and hybrid attention equal single-process attention, forward and backward (float64)."""

import itertools

import pytest
import torch

from dist_utils import run_ranks
from longvid import masks
from longvid.parallel import Mesh, ShardedMask, attention, init_mesh, shard_sequence, sp_attention

B, S, H, D = 2, 30, 4, 8  # S is not a multiple of 2P: every layout pads
SEGMENTS = torch.tensor([0] * 10 + [1] * 7 + [2] * 5 + [3] * 8)  # prefix + 3 responses
MASKS = {"causal": masks.causal, "shared_prefix": masks.shared_prefix(SEGMENTS)}
LAYOUTS = ("contiguous", "zigzag")
KV_HEADS = (4, 2)  # MHA and GQA (split over 2 ranks, repeated over 4)

CASES = {
    # world size -> [(mesh kwargs, mode, layout, mask, kv heads)]
    2: [
        (dict(sp=2), mode, layout, mask, hkv)
        for mode, layout, mask, hkv in itertools.product(("ulysses", "ring"), LAYOUTS, MASKS, KV_HEADS)
    ],
    4: [
        (dict(sp=4, ulysses=2, ring=2), mode, layout, mask, hkv)
        for mode, layout, mask, hkv in itertools.product(("ulysses", "ring", "hybrid"), LAYOUTS, MASKS, KV_HEADS)
    ]
    # dp=2 x sp=2: ring peers must be the global ranks of this rank's own SP group.
    + [(dict(sp=2, ring=2), mode, "zigzag", "shared_prefix", 2) for mode in ("ring", "hybrid")],
}


def _inputs(hkv):
    g = torch.Generator().manual_seed(hkv)
    shapes = [(B, S, H, D), (B, S, hkv, D), (B, S, hkv, D), (B, S, H, D)]
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]


def _reference(mask_fn, hkv):
    q, k, v, w = _inputs(hkv)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = attention(q, k, v, mask_fn)
    (out * w).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


def _check_case(mesh, mode, layout, mask_name, hkv):
    """Max |SP - reference| over outputs and q/k/v grads at real positions; pad rows must be clean."""
    mask_fn = MASKS[mask_name]
    ref = _reference(mask_fn, hkv)
    q, k, v, w = _inputs(hkv)
    local = [shard_sequence(t, 1, mesh, layout)[0].requires_grad_() for t in (q, k, v)]
    w_local, pos = shard_sequence(w, 1, mesh, layout)
    # tiles of 8 tokens: several tiles per block, some fully masked, some rows empty within a tile
    out = sp_attention(*local, ShardedMask.from_layout(mask_fn, S, mesh, layout), mesh, mode, tile=8)
    (out * w_local).sum().backward()
    real = pos < S
    err = 0.0
    for ours, theirs in zip([out.detach()] + [t.grad for t in local], ref):
        err = max(err, (ours[:, real] - theirs[:, pos[real]]).abs().max().item())
    clean = bool(torch.isfinite(out).all()) and all(t.grad[:, ~real].abs().sum() == 0 for t in local)
    return err, clean


def _worker(rank, world, cases):
    meshes, results = {}, {}
    for mesh_kwargs, *case in cases:
        key = tuple(sorted(mesh_kwargs.items()))
        if key not in meshes:  # every rank builds the meshes in the same order
            meshes[key] = init_mesh(**mesh_kwargs)
        results[(key, *case)] = _check_case(meshes[key], *case)
    return results


@pytest.fixture(scope="module", params=[2, 4], ids=lambda w: f"world{w}")
def world_results(request):
    world = request.param
    return world, run_ranks(_worker, world, CASES[world])


def test_every_case_matches_single_process(world_results):
    world, per_rank = world_results
    assert len(per_rank[0]) == len(CASES[world])
    failures = {}
    for rank, results in enumerate(per_rank):
        for case, (err, clean) in results.items():
            if not (err < 1e-10 and clean):
                failures[(rank, case)] = (err, clean)
    assert not failures, failures


@pytest.mark.parametrize("tile", [4, 7, 512])
@pytest.mark.parametrize("mask_name", list(MASKS))
def test_tiled_kernel_on_a_mesh_of_one_equals_reference(mask_name, tile):
    mesh = Mesh.single()
    q, k, v, w = _inputs(2)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = sp_attention(q, k, v, ShardedMask.from_layout(MASKS[mask_name], S, mesh), mesh, "ring", tile=tile)
    (out * w).sum().backward()
    ours = [out.detach()] + [t.grad for t in (q, k, v)]
    for a, b in zip(ours, _reference(MASKS[mask_name], 2)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_rows_with_nothing_to_attend_give_zeros_not_nan():
    # Queries 0..3 may see nothing (a mask can leave rows empty): output 0, gradients 0, no NaN.
    mask_fn = masks.and_masks(masks.causal, lambda q, kv: q >= 4)
    q, k, v, w = (t.requires_grad_() for t in _inputs(4))
    out = sp_attention(q, k, v, ShardedMask.from_layout(mask_fn, S, Mesh.single()), Mesh.single(), tile=4)
    (out * w).sum().backward()
    assert torch.isfinite(out).all() and out[:, :4].abs().sum() == 0
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v)) and q.grad[:, :4].abs().sum() == 0
    for a, b in zip([out.detach()] + [t.grad for t in (q, k, v)], _reference(mask_fn, 4)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)  # torch 2.13's SDPA also gives zeros


def test_reference_attention_matches_explicit_softmax():
    q, k, v, _ = _inputs(2)
    mask_fn = MASKS["shared_prefix"]
    kr, vr = (t.repeat_interleave(2, dim=2) for t in (k, v))
    scores = torch.einsum("bqhd,bkhd->bhqk", q, kr) * D**-0.5
    scores = scores.masked_fill(~masks.dense_mask(mask_fn, S, S), float("-inf"))
    expected = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), vr)
    torch.testing.assert_close(attention(q, k, v, mask_fn), expected, rtol=0, atol=1e-12)


def test_padding_queries_see_only_themselves():
    mask = ShardedMask(masks.causal, torch.arange(8).view(2, 4), seq_len=6)
    dense = mask(torch.arange(8)[:, None], torch.arange(8)[None, :])
    assert torch.equal(dense[:6, :6], masks.dense_mask(masks.causal, 6, 6))
    assert not dense[:6, 6:].any()  # real tokens never see padding
    assert torch.equal(dense[6:], torch.eye(8, dtype=torch.bool)[6:])
