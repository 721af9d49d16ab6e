"""Sharding, gathering and the sharded loss equal their one-process versions, values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from dist_utils import run_ranks
from longvid.errors import ConfigError
from longvid.parallel import (
    Mesh,
    gather_embeddings,
    init_mesh,
    shard_positions,
    shard_sequence,
    sharded_loss,
    shift_labels,
    split_frames,
    unshard,
)

B, S, V = 2, 37, 11


def _logits_labels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, S, V, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (B, S), generator=g)
    labels[:, :5] = -100  # a prompt without targets
    labels[1, 20:23] = -100
    return logits, labels


def _loss_case(mesh, layout):
    """|sharded - full| for the loss value, the logits gradient, and an unshard round trip."""
    logits, labels = _logits_labels()
    full_logits = logits.clone().requires_grad_()
    # The usual one-process shift: logits[:, i] predicts labels[:, i + 1].
    full = F.cross_entropy(full_logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    full.backward()

    local, pos = shard_sequence(logits, 1, mesh, layout)
    local.requires_grad_()
    targets, _ = shard_sequence(shift_labels(labels), 1, mesh, layout, pad_value=-100)
    loss = sharded_loss(local, targets, mesh)
    loss.backward()
    real = pos < S
    grad_err = (local.grad[:, real] - full_logits.grad[:, pos[real]]).abs().max().item()
    pad_grad = local.grad[:, ~real].abs().sum().item()

    # unshard: every rank gets the whole tensor; the backward of the same global function on
    # every rank is this rank's slice of the gradient (not P times it).
    x = local.detach().requires_grad_()
    whole = unshard(x, 1, mesh, S, layout)
    w = torch.randn(B, S, V, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (whole * w).sum().backward()
    unshard_err = max(
        (whole - logits).abs().max().item(),
        (x.grad[:, real] - w[:, pos[real]]).abs().max().item(),
    )
    # The anchors' bug, for contrast: shifting inside each shard drops a target per boundary.
    naive_targets = shift_labels(shard_sequence(labels, 1, mesh, layout, pad_value=-100)[0])
    naive_gap = abs(sharded_loss(local.detach(), naive_targets, mesh).item() - full.item())
    return abs(loss.item() - full.item()), grad_err, pad_grad, unshard_err, naive_gap


def _gather_case(mesh):
    """Uneven encoder shares gathered; each rank backpropagates a different part of the loss."""
    g = torch.Generator().manual_seed(2)
    n_patches, rows = 7, 3
    full = torch.randn(n_patches * rows, 5, generator=g, dtype=torch.float64)
    w = torch.randn(n_patches * rows, 5, generator=g, dtype=torch.float64)
    start, stop = split_frames(n_patches, mesh.sp_size)[mesh.sp_rank]
    mine = full[start * rows : stop * rows].clone().requires_grad_()
    gathered = gather_embeddings(mine * 2, mesh)  # the "encoder" is x -> 2x
    # Downstream each rank uses its own sequence shard of the gathered embeddings.
    part, pos = shard_sequence(gathered * w, 0, mesh, "zigzag")
    part.sum().backward()
    expected_grad = 2 * w[start * rows : stop * rows]
    return max((gathered - 2 * full).abs().max().item(), (mine.grad - expected_grad).abs().max().item())


def _mesh_case(rank, world):
    """Coordinates and group members of a dp=2 x (ring 2 x ulysses 1) mesh, and bad layouts rejected."""
    import torch.distributed as dist

    errors = []
    for kwargs in (dict(sp=3), dict(sp=8), dict(sp=4, ulysses=3), dict(sp=4, ulysses=2, ring=1)):
        try:
            init_mesh(**kwargs)
        except ConfigError as e:
            errors.append(str(e))
    mesh = init_mesh(sp=2, ring=2)
    members = {name: dist.get_process_group_ranks(g) for name, g in mesh.groups.items()}
    return errors, (mesh.dp_rank, mesh.sp_rank, mesh.ring_rank, mesh.ulysses_rank), members


def _worker(rank, world):
    out = {}
    for sp in sorted({2, world}):
        mesh = init_mesh(sp=sp)
        for layout in ("contiguous", "zigzag"):
            out[("loss", sp, layout)] = _loss_case(mesh, layout)
        out[("gather", sp)] = _gather_case(mesh)
    if world == 4:
        out["mesh"] = _mesh_case(rank, world)
    return out


@pytest.fixture(scope="module")
def worlds():
    return {world: run_ranks(_worker, world) for world in (2, 4)}


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_loss_and_unshard_equal_full(worlds, world):
    for results in worlds[world]:
        cases = {k: v for k, v in results.items() if k[0] == "loss"}
        assert len(cases) == (2 if world == 2 else 4)
        for case, (loss_err, grad_err, pad_grad, unshard_err, naive_gap) in cases.items():
            assert loss_err < 1e-12 and grad_err < 1e-12 and unshard_err < 1e-12, case
            assert pad_grad == 0, case
            assert naive_gap > 1e-3, case  # shifting inside shards would have been caught


@pytest.mark.parametrize("world", [2, 4])
def test_gather_embeddings_uneven_forward_and_backward(worlds, world):
    for results in worlds[world]:
        cases = {k: v for k, v in results.items() if k[0] == "gather"}
        assert cases and all(err < 1e-12 for err in cases.values()), cases


def test_mesh_groups_and_validation(worlds):
    members = []
    for rank, results in enumerate(worlds[4]):
        errors, coords, groups = results["mesh"]
        assert errors == [
            "world size 4 is not divisible by sp=3: data parallel needs whole SP groups",
            "sequence parallel size sp=8 is larger than the world size 4",
            "ulysses=3 does not divide sp=4",
            "ulysses x ring must equal sp: 2 x 1 != 4",
        ]
        assert coords == (rank // 2, rank % 2, rank % 2, 0)
        members.append(groups)
    assert members[3] == {"dp": [1, 3], "sp": [2, 3], "ring": [2, 3], "ulysses": [3], "dp_sp": [0, 1, 2, 3]}
    assert members[0]["sp"] == [0, 1] and members[0]["dp"] == [0, 2]


# ---------------------------------------------------------------------------------------------
# One process
# ---------------------------------------------------------------------------------------------
def test_split_frames_is_balanced_and_covers_everything():
    assert split_frames(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert split_frames(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]
    for n in range(0, 30):
        for p in (1, 2, 3, 4, 8):
            spans = split_frames(n, p)
            sizes = [b - a for a, b in spans]
            assert spans[0][0] == 0 and spans[-1][1] == n and max(sizes) - min(sizes) <= 1
            assert all(spans[i][1] == spans[i + 1][0] for i in range(p - 1))


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_shard_positions_partition_the_padded_sequence(layout, p):
    for n in (1, 7, 16, 37):
        pos = shard_positions(n, p, layout)
        chunks = p if layout == "contiguous" else 2 * p
        assert pos.shape[0] == p and pos.numel() % chunks == 0 and pos.numel() >= n > pos.numel() - chunks
        assert torch.equal(pos.flatten().sort().values, torch.arange(pos.numel()))


def test_zigzag_gives_rank_r_chunks_r_and_2p_minus_1_minus_r():
    assert shard_positions(8, 2, "zigzag").tolist() == [[0, 1, 6, 7], [2, 3, 4, 5]]
    with pytest.raises(ConfigError, match="unknown sequence layout"):
        shard_positions(8, 2, "striped")


def test_shift_labels_over_the_whole_sequence():
    labels = torch.tensor([[5, 6, 7, 8]])
    assert shift_labels(labels).tolist() == [[6, 7, 8, -100]]


def test_mesh_of_one_makes_every_helper_a_no_op():
    mesh = Mesh.single()
    assert (mesh.sp_size, mesh.sp_rank, mesh.world_size) == (1, 0, 1)
    assert all(g is None for g in mesh.groups.values())
    logits, labels = _logits_labels()
    local, pos = shard_sequence(logits, 1, mesh)
    assert torch.equal(local, logits) and torch.equal(pos, torch.arange(S))
    assert torch.equal(unshard(local, 1, mesh, S), logits)
    x = torch.randn(4, 3)
    assert gather_embeddings(x, mesh) is x
    expected = F.cross_entropy(logits.reshape(-1, V), shift_labels(labels).reshape(-1), ignore_index=-100)
    torch.testing.assert_close(sharded_loss(logits, shift_labels(labels), mesh), expected)


def test_init_mesh_without_distributed_is_single(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_mesh() == Mesh.single()
    with pytest.raises(ConfigError, match="larger than the world size 1"):
        init_mesh(sp=2)


def test_a_multi_process_mesh_needs_its_groups():
    with pytest.raises(ConfigError, match="init_mesh"):
        Mesh(ulysses_size=2)
