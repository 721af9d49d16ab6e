"""Parallelism: one long video across many ranks (mesh, sharding, attention, launch), and FSDP2,
activation checkpointing and sequence parallelism applied to a model from outside (`parallelize`)."""

from .attention import (
    ShardedMask,
    attention,
    attention_for,
    hybrid_attention,
    register_sp_attention,
    ring_attention,
    sp_attention,
    ulysses_attention,
)
from .launch import fail_fast, init_distributed, run_distributed, spawn_local
from .mesh import Mesh, check_heads, init_mesh
from .parallelize import apply_activation_checkpointing, apply_fsdp, parallelize
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
    "apply_activation_checkpointing",
    "apply_fsdp",
    "attention",
    "attention_for",
    "check_heads",
    "fail_fast",
    "gather_embeddings",
    "hybrid_attention",
    "init_distributed",
    "init_mesh",
    "parallelize",
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
