"""A rank that raises ends the whole job fast, with its original error visible — never a hang."""

import logging
import subprocess
import sys
import time

import torch
import torch.distributed as dist

from dist_utils import launch_ranks
from longvid.parallel import fail_fast, init_mesh

MESSAGE = "original failure on purpose"


def _job(rank, world):
    """Rank 1 fails; the others wait in a collective that can never complete."""
    mesh = init_mesh(sp=world)
    if rank == 1:
        raise ValueError(MESSAGE)
    dist.all_reduce(torch.ones(1), group=mesh.sp_group)
    dist.barrier()


def _spawned(rank, world, log_dir):
    logging.basicConfig(filename=f"{log_dir}/rank{rank}.log", level=logging.INFO)
    fail_fast(_job)(rank, world)


def test_spawned_job_fails_fast_with_the_original_error(tmp_path):
    start = time.monotonic()
    codes, results = launch_ranks(_spawned, 4, str(tmp_path), timeout=90)
    elapsed = time.monotonic() - start
    assert codes == [1, 1, 1, 1] and not results  # every rank exited by itself, none finished
    assert elapsed < 60, elapsed
    failing = (tmp_path / "rank1.log").read_text()
    assert "rank 1 failed" in failing and f"ValueError: {MESSAGE}" in failing
    for rank in (0, 2, 3):  # the peers failed too, at their collective, and said so
        assert f"rank {rank} failed" in (tmp_path / f"rank{rank}.log").read_text()


def test_torchrun_job_fails_fast_with_the_original_error():
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__],
        capture_output=True,
        text=True,
        timeout=90,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert elapsed < 60, elapsed
    assert "rank 1 failed" in proc.stderr and f"ValueError: {MESSAGE}" in proc.stderr, proc.stderr[-3000:]


if __name__ == "__main__":  # the program torchrun runs above
    import os

    torch.set_num_threads(1)
    fail_fast(_job)(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
