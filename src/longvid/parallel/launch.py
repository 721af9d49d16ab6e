"""Starting a distributed job, and failing it fast: one rank's error ends the job, never a hang.

`spawn_local` runs a function on N local processes in one gloo group: CPU development, tests and
benchmarks without torchrun.

A rank that raises while its peers wait in a collective would leave them blocked until the
collective timeout (or forever with NCCL's defaults). `fail_fast` logs the traceback with the rank
and leaves with `os._exit(1)`: the process dies without running teardown that could itself block
on peers; gloo peers see the closed connection and fail at their next collective, torchrun sees a
non-zero exit and stops the other ranks, and the collective timeout set by `init_distributed`
bounds whatever is left.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import os
import queue
import socket
import sys
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=10)


def init_distributed(backend: str | None = None, timeout: timedelta = DEFAULT_TIMEOUT, **kwargs) -> None:
    """`init_process_group` from torchrun's environment: NCCL on GPUs, gloo on CPU, bounded collectives.

    Under NCCL this process's GPU is `cuda:LOCAL_RANK`, set as the current device before the group
    exists (NCCL binds each rank to the current device)."""
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        kwargs.setdefault("device_id", torch.device("cuda", torch.cuda.current_device()))
    dist.init_process_group(backend, timeout=timeout, **kwargs)


def _rank() -> str:
    if dist.is_available() and dist.is_initialized():
        return str(dist.get_rank())
    return os.environ.get("RANK", "?")


def fail_fast(fn):
    """Decorate a rank's entry point: an exception is logged with the rank, then the process exits 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SystemExit as e:
            if e.code in (None, 0):
                raise
            _die(f"exited with {e.code}")
        except BaseException:
            _die(traceback.format_exc())

    return wrapper


def run_distributed(fn, *args, **kwargs):
    """Call `fn(*args, **kwargs)` under `fail_fast`."""
    return fail_fast(fn)(*args, **kwargs)


def _die(what: str) -> None:
    log.critical("rank %s failed:\n%s", _rank(), what)
    for handler in logging.getLogger().handlers + [logging.lastResort]:
        if handler is not None:
            handler.flush()
    sys.stderr.flush()
    os._exit(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_rank(fn, rank, world_size, port, args, results, timeout_s, threads):
    torch.set_num_threads(threads)
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
        )
        results.put((rank, True, fn(rank, world_size, *args)))
        # gloo peers may still be connecting a group this rank has finished creating: leave together.
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        results.put((rank, False, traceback.format_exc()))
        results.close()
        results.join_thread()
        os._exit(1)  # peers fail at their next collective instead of waiting for us


def spawn_local(fn, world_size: int, *args, timeout: float = 600.0, preload=("torch",), threads: int = 1):
    """Run `fn(rank, world_size, *args)` on `world_size` local processes joined in a gloo group.

    Returns `(exit codes, {rank: (ok, result or traceback)})`; results must be small picklable
    values. Never waits past `timeout` (stragglers are killed). Processes are forked from a
    forkserver that imports `preload` once (set when the server first starts): a fresh
    interpreter per rank would import torch every time, seconds each on a small machine.
    """
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_local_rank, args=(fn, r, world_size, port, args, results, max(timeout / 2, 10), threads))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    got, deadline = {}, time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.is_alive() for p in procs):
        try:  # drain while running: a full pipe would block a child's exit
            rank, ok, value = results.get(timeout=0.1)
            got[rank] = (ok, value)
        except queue.Empty:
            pass
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join()
    while True:
        try:
            rank, ok, value = results.get(timeout=0.2)
            got[rank] = (ok, value)
        except queue.Empty:
            break
    return [p.exitcode for p in procs], got
