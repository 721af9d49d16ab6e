"""Run a function on every rank of a local gloo group (for the distributed tests).

`run_ranks(fn, world_size, *args)` calls `fn(rank, world_size, *args)` on `world_size` processes
joined in a gloo group on a free localhost port (`longvid.parallel.launch.spawn_local`) and
returns the results in rank order, or raises with every failing rank's traceback. A rank that
raises exits at once, so its peers fail at their next collective instead of waiting.
"""

from __future__ import annotations

from longvid.parallel.launch import spawn_local

# Imported once by the forkserver the ranks are forked from (~0.1 s per job instead of seconds).
PRELOAD = ("torch", "torch.distributed", "longvid.parallel", "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl")


def launch_ranks(fn, world_size: int, *args, timeout: float = 120.0):
    """`(exit codes, {rank: (ok, result or traceback)})` of the job; never hangs past `timeout`."""
    return spawn_local(fn, world_size, *args, timeout=timeout, preload=PRELOAD)


def run_ranks(fn, world_size: int, *args, timeout: float = 120.0) -> list:
    """Results of `fn(rank, world_size, *args)` in rank order; raises if any rank failed or timed out."""
    codes, got = launch_ranks(fn, world_size, *args, timeout=timeout)
    errors = [f"rank {r}:\n{value}" for r, (ok, value) in sorted(got.items()) if not ok]
    if errors or any(c != 0 for c in codes) or len(got) != world_size:
        raise AssertionError(f"distributed job failed (exit codes {codes}):\n" + "\n".join(errors))
    return [got[r][1] for r in range(world_size)]
