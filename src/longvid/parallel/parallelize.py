"""Parallelism applied from outside to an unmodified Hugging Face model, one function per concern.

As in torchtitan's `parallelize.py`: activation checkpointing per block, FSDP2 (`fully_shard`)
per block and per entry module over the flattened data x sequence-parallel mesh, and sequence
parallelism (`SequenceParallel`) — each applied to the model the adapter holds, found through
`adapter.layers()` and `adapter.entry_modules()`, so nothing here knows a model family.

Order (the caller's, `Trainer._setup`): freeze → LoRA → `parallelize` → optimizer.

Gradient semantics under FSDP are those of the replicated path (`reduce_replicated_grads`):
every FSDP module reduces by a plain SUM over all ranks (`set_gradient_divide_factor(1)` and
forced sum reduction on each module — both act only on the module they are called on, and a
custom factor would need `PREMUL_SUM`, which gloo lacks). A recipe whose losses are normalised
per data-parallel rank divides by the DP size itself (`scale_sharded_grads`).

A mesh of one process, or `parallel.fsdp: false`, is the plain path: no FSDP, parameters
replicated, gradients reduced by `reduce_replicated_grads`.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..model.adapter import VLMAdapter
from .apply import SequenceParallel
from .mesh import Mesh

log = logging.getLogger(__name__)


def uses_fsdp(mesh: Mesh, config) -> bool:
    """FSDP shards parameters over the mesh when there is more than one process and it is on."""
    return mesh.world_size > 1 and config.fsdp


def parallelize(adapter: VLMAdapter, mesh: Mesh, config, *, trainable: bool = True) -> SequenceParallel:
    """Apply `config` (a `ParallelConfig`) to `adapter` on `mesh`: device placement, activation
    checkpointing (trainable models only), FSDP, and the sequence-parallel runner it returns.

    `trainable=False` is a frozen model run in lockstep with the policy (the GRPO reference):
    all its parameters are sharded. For a trainable model, frozen parameters stay replicated so
    that calls a rank makes alone (an embedding-cache miss through a frozen vision tower) are no
    collectives.
    """
    adapter.model.to(mesh.device)
    if trainable and config.activation_checkpointing:
        layers = adapter.layers()
        apply_activation_checkpointing(layers["llm"] + layers["vision"])
    sharded = uses_fsdp(mesh, config)
    if sharded:
        apply_fsdp(adapter, mesh, reshard_after_forward=config.reshard_after_forward, shard_frozen=not trainable)
    sp = SequenceParallel(adapter, mesh, mode=config.mode, layout=config.layout, sharded=sharded)
    sp.reshard_after_forward = config.reshard_after_forward
    return sp


# ------------------------------------------------------------------------------------------------
# Activation checkpointing
# ------------------------------------------------------------------------------------------------
def apply_activation_checkpointing(layers: list[nn.Module]) -> None:
    """Recompute each block's activations in backward instead of keeping them (non-reentrant
    `torch.utils.checkpoint`). The module tree and its parameter names are untouched (the block's
    forward is wrapped in place), so checkpoints and FSDP see the same model."""
    for layer in layers:
        if getattr(layer, "_longvid_checkpointed", False):
            continue
        forward = layer.forward

        @functools.wraps(forward)
        def checkpointed(*args, _forward=forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        layer.forward = checkpointed
        layer._longvid_checkpointed = True


# ------------------------------------------------------------------------------------------------
# FSDP2
# ------------------------------------------------------------------------------------------------
def fsdp_units(adapter: VLMAdapter) -> list[list[nn.Module]]:
    """The modules sharded as one unit each, children before parents.

    Units are the repeated blocks and the modules the adapter calls directly; each gathers its
    parameters when called. Modules that share a parameter with a unit outside their own subtree
    (tied input/output embeddings) join that unit, as FSDP requires.
    """
    root = adapter.model
    names = {id(m): name for name, m in root.named_modules()}
    layers = adapter.layers()
    modules = [*layers["vision"], *layers["llm"], *adapter.entry_modules()]
    modules.sort(key=lambda m: -names[id(m)].count("."))  # deepest first: children before parents
    units: list[list[nn.Module]] = []
    owner: dict[int, int] = {}

    def inside(child: nn.Module, parent: nn.Module) -> bool:
        a, b = names[id(child)], names[id(parent)]
        return b == "" or a.startswith(b + ".")

    for module in modules:
        foreign = {
            owner[id(p)]
            for p in module.parameters()
            if id(p) in owner and not all(inside(m, module) for m in units[owner[id(p)]])
        }
        if len(foreign) > 1:
            raise ValueError(f"{names[id(module)]} shares parameters with several FSDP units; cannot group it")
        index = foreign.pop() if foreign else len(units)
        if index == len(units):
            units.append([])
        units[index].append(module)
        for p in module.parameters():
            owner.setdefault(id(p), index)
    return units


def apply_fsdp(
    adapter: VLMAdapter,
    mesh: Mesh,
    *,
    reshard_after_forward: bool = True,
    shard_frozen: bool = False,
) -> list[nn.Module]:
    """`fully_shard` every unit of `fsdp_units(adapter)` and then the whole model over the
    flattened data x sequence-parallel mesh; returns the FSDP modules.

    Mixed precision (torchtitan's): the model computes in the dtype it was loaded in; when that is
    bfloat16/float16, each trainable parameter's sharded master copy (what the optimizer steps) is
    float32 and gradients are reduced in float32. A bf16 master would round away any update below
    2^-8 of the weight — every step of a full fine-tune at lr 1e-6. Frozen parameters keep their
    dtype and stay replicated unless `shard_frozen`.
    """
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    root = adapter.model
    dtype = adapter.dtype
    low = dtype in (torch.bfloat16, torch.float16)
    if low:
        for p in root.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if low else dtype)
    ignored = set() if shard_frozen else {p for p in root.parameters() if not p.requires_grad}
    options = dict(
        mesh=mesh.device_meshes["dp_sp"],
        reshard_after_forward=reshard_after_forward,
        mp_policy=policy,
        ignored_params=ignored or None,
    )
    for unit in fsdp_units(adapter):
        fully_shard(unit if len(unit) > 1 else unit[0], **options)
    fully_shard(root, **options)
    sharded = [m for m in root.modules() if isinstance(m, FSDPModule)]
    for module in sharded:
        module.set_gradient_divide_factor(1.0)
        module.set_force_sum_reduction_for_comms(True)
    # The adapter calls entry modules directly, never the root: make the root the FSDP root now
    # (FSDP would otherwise pick whichever module runs first) so all units share one state.
    root._get_fsdp_state()._lazy_init()
    log.info("FSDP: %d units over %d ranks (%s params, frozen %s)", len(sharded), mesh.world_size, dtype,
             "sharded" if shard_frozen else "replicated")
    return sharded


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def scale_sharded_grads(parameters, factor: float) -> None:
    """Multiply the (sharded) gradients by `factor` (e.g. 1 / DP size for per-rank-normalised losses)."""
    for p in parameters:
        if p.grad is not None:
            p.grad.mul_(factor)
