"""Preemption: SIGTERM or SIGINT finishes the current step, writes a checkpoint and exits with
`EXIT_PREEMPTED` (75, EX_TEMPFAIL: "try again"), so a scheduler can requeue the job with `--resume`.

SLURM and Kubernetes send SIGTERM some seconds before they kill a job; Ctrl-C sends SIGINT. The
first signal only sets a flag the training loop reads after each step; a second one acts as the
signal normally does (a second Ctrl-C interrupts at once). Under torchrun the flag is all-reduced
(max) over every rank after each step, so when any rank is signalled all of them save the same
step and exit together.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading

import torch

from .errors import LongvidError

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(LongvidError):
    """Training stopped on a signal after saving a checkpoint; resume it with `--resume`."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, step: int, checkpoint):
        self.step, self.checkpoint = step, checkpoint
        where = f" to {checkpoint}" if checkpoint is not None else ""
        super().__init__(f"stopped by a signal after step {step}; checkpoint written{where}; continue with --resume")


class StopSignal:
    """While active, SIGTERM/SIGINT set `received` instead of ending the process."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            # A second signal: behave as if we were not listening.
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.received = signum
        log.warning("received %s: finishing this step, then saving a checkpoint", signal.Signals(signum).name)

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def agreed(self, mesh=None, device: torch.device | str = "cpu") -> bool:
        """Whether any rank was signalled (one all-reduce per call when there are several ranks)."""
        flag = self.received is not None
        if mesh is not None and mesh.world_size > 1:
            t = torch.tensor([int(flag)], device=device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            flag = bool(t.item())
        return flag


def stops_on_signal(train):
    """Decorate `Trainer.train`: signals are caught while it runs and read through `self.stop`."""

    @functools.wraps(train)
    def wrapper(self, *args, **kwargs):
        with StopSignal() as self.stop:
            return train(self, *args, **kwargs)

    return wrapper
