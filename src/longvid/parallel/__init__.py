"""Sequence parallelism: one long video across many ranks (mesh, sharding, attention, launch)."""

from .attention import (
    ShardedMask,
    attention,
    hybrid_attention,
    register_sp_attention,
    ring_attention,
    sp_attention,
    ulysses_attention,
)
from .launch import fail_fast, init_distributed, run_distributed, spawn_local
from .mesh import Mesh, check_heads, init_mesh
from .shard import (
    all_reduce_grads,
    gather_embeddings,
    shard_positions,
    shard_sequence,
    sharded_loss,
    shift_labels,
    split_frames,
    unshard,
)

__all__ = [
    "Mesh",
    "ShardedMask",
    "all_reduce_grads",
    "attention",
    "check_heads",
    "fail_fast",
    "gather_embeddings",
    "hybrid_attention",
    "init_distributed",
    "init_mesh",
    "register_sp_attention",
    "ring_attention",
    "run_distributed",
    "shard_positions",
    "shard_sequence",
    "sharded_loss",
    "shift_labels",
    "sp_attention",
    "spawn_local",
    "split_frames",
    "ulysses_attention",
    "unshard",
]
