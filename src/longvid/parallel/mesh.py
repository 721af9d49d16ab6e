"""The process groups: data parallel x sequence parallel, sequence parallel = Ulysses x ring.

Global ranks are laid out row-major over `(dp, ring, ulysses)`, as in LongVILA's 2-D attention and
USP: the ranks of one Ulysses group are consecutive (inside a node, where all-to-all is cheap),
the ranks of one ring group are strided (across nodes, where point-to-point traffic overlaps with
compute). A sequence-parallel group is one `(ring, ulysses)` plane; SP rank = ring_rank * U +
ulysses_rank.

One process with no `torch.distributed` is `Mesh.single()`: every size is 1, every group is
`None`, and every collective in `longvid.parallel` is a no-op on it — callers never special-case
it.

The mesh also says where this process computes (`Mesh.device`): `cuda:LOCAL_RANK` under torchrun
on GPUs (NCCL), the CPU under gloo, and for one process the first GPU when there is one unless
told otherwise. Models, caches and the tensors of every collective live there.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..device import resolve_device
from ..errors import ConfigError

log = logging.getLogger(__name__)

DIMS = ("dp", "ring", "ulysses")


@dataclass(frozen=True)
class Mesh:
    """Who this process is in the dp x (ring x ulysses) grid, and the groups to talk to."""

    dp_size: int = 1
    ring_size: int = 1
    ulysses_size: int = 1
    rank: int = 0
    # torch DeviceMeshes by name: "dp", "ring", "ulysses", and the flattened "sp" and "dp_sp"
    # (what FSDP2 shards parameters over: the SP ranks of a group hold the same weights). Empty
    # when this is one process.
    device_meshes: dict = field(default_factory=dict, compare=False, repr=False)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"), compare=False)

    def __post_init__(self):
        if not self.device_meshes and self.world_size > 1:
            raise ConfigError("a mesh of more than one process needs its DeviceMeshes: build it with init_mesh()")

    @classmethod
    def single(cls, device: str | torch.device | None = "auto") -> Mesh:
        """One process computing on `device` ("auto": the first GPU if there is one, else the CPU)."""
        return cls(device=resolve_device(device))

    # sizes and coordinates ------------------------------------------------------------------
    @property
    def sp_size(self) -> int:
        return self.ring_size * self.ulysses_size

    @property
    def world_size(self) -> int:
        return self.dp_size * self.sp_size

    @property
    def dp_rank(self) -> int:
        return self.rank // self.sp_size

    @property
    def sp_rank(self) -> int:
        return self.rank % self.sp_size

    @property
    def ring_rank(self) -> int:
        return self.sp_rank // self.ulysses_size

    @property
    def ulysses_rank(self) -> int:
        return self.sp_rank % self.ulysses_size

    def sp_global_rank(self, sp_rank: int) -> int:
        """Global rank of SP rank `sp_rank` in this process's SP group."""
        return self.dp_rank * self.sp_size + sp_rank

    # groups -----------------------------------------------------------------------------------
    def group(self, name: str):
        """The process group `name` ("dp", "sp", "ring", "ulysses", "dp_sp"), None if one process."""
        if not self.device_meshes:
            return None
        return self.device_meshes[name].get_group()

    @property
    def groups(self) -> dict:
        return {name: self.group(name) for name in ("dp", "sp", "ring", "ulysses", "dp_sp")}

    @property
    def sp_group(self):
        return self.group("sp")

    @property
    def dp_group(self):
        return self.group("dp")

    @property
    def ulysses_group(self):
        return self.group("ulysses")

    @property
    def ring_group(self):
        return self.group("ring")


def resolve_sizes(world_size: int, sp: int = 1, ulysses: int | None = None, ring: int | None = None):
    """Check a requested layout against the world size and return `(dp, ring, ulysses)`.

    Ulysses defaults to the whole SP group (ring of 1) when neither split is given; when one is
    given the other is what is left. Raises `ConfigError` naming the impossible value.
    """
    if sp < 1:
        raise ConfigError(f"sequence parallel size sp={sp} must be at least 1")
    if sp > world_size:
        raise ConfigError(f"sequence parallel size sp={sp} is larger than the world size {world_size}")
    if world_size % sp:
        raise ConfigError(
            f"world size {world_size} is not divisible by sp={sp}: data parallel needs whole SP groups"
        )
    if ulysses is None and ring is None:
        ulysses, ring = sp, 1
    elif ulysses is None:
        if ring < 1 or sp % ring:
            raise ConfigError(f"ring={ring} does not divide sp={sp}")
        ulysses = sp // ring
    elif ring is None:
        if ulysses < 1 or sp % ulysses:
            raise ConfigError(f"ulysses={ulysses} does not divide sp={sp}")
        ring = sp // ulysses
    if ulysses < 1 or ring < 1 or ulysses * ring != sp:
        raise ConfigError(f"ulysses x ring must equal sp: {ulysses} x {ring} != {sp}")
    return world_size // sp, ring, ulysses


def check_heads(num_heads: int, num_kv_heads: int, ulysses: int) -> None:
    """Ulysses scatters heads: they must split evenly, and GQA KV heads must split or repeat evenly."""
    if num_heads % ulysses:
        raise ConfigError(f"{num_heads} attention heads do not divide by the Ulysses size {ulysses}")
    if num_heads % num_kv_heads:
        raise ConfigError(f"{num_heads} attention heads are not a multiple of {num_kv_heads} KV heads")
    if num_kv_heads % ulysses and ulysses % num_kv_heads:
        raise ConfigError(
            f"{num_kv_heads} KV heads cannot be spread over Ulysses size {ulysses}: "
            "need kv_heads % ulysses == 0 or ulysses % kv_heads == 0"
        )


def init_mesh(
    sp: int = 1, ulysses: int | None = None, ring: int | None = None, device: str | torch.device | None = "auto"
) -> Mesh:
    """The mesh of this job: from torch.distributed if initialised, else from torchrun's env.

    Validates the layout before any process group is created. Without torch.distributed and
    without a multi-process torchrun environment this is `Mesh.single(device)` (when sp == 1).
    With several processes the device follows the backend: NCCL computes on `cuda:LOCAL_RANK`,
    gloo on the CPU (`device="cpu"` asks for gloo even where GPUs exist).
    """
    from .launch import init_distributed

    if dist.is_available() and dist.is_initialized():
        world_size, rank = dist.get_world_size(), dist.get_rank()
    else:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    dp, ring_size, ulysses_size = resolve_sizes(world_size, sp, ulysses, ring)
    if world_size == 1 and not (dist.is_available() and dist.is_initialized()):
        return Mesh.single(device)
    wanted = resolve_device(device)
    if not dist.is_initialized():
        init_distributed("nccl" if wanted.type == "cuda" else "gloo")
    from torch.distributed.device_mesh import init_device_mesh

    if dist.get_backend() == "nccl":
        here = torch.device("cuda", torch.cuda.current_device())
    else:
        here = torch.device("cpu")
    root = init_device_mesh(here.type, (dp, ring_size, ulysses_size), mesh_dim_names=DIMS)
    meshes = {name: root[name] for name in DIMS}
    # Merged dims the way torchtitan makes them; kept here, not sliced from the root later.
    meshes["sp"] = root["ring", "ulysses"]._flatten("sp")
    meshes["dp_sp"] = root._flatten("dp_sp")
    mesh = Mesh(dp_size=dp, ring_size=ring_size, ulysses_size=ulysses_size, rank=rank, device_meshes=meshes, device=here)
    log.info("mesh: dp=%d x sp=%d (ring %d x ulysses %d), rank %d on %s", dp, mesh.sp_size, ring_size, ulysses_size, rank, here)
    return mesh
