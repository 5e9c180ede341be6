"""Preemption: a cluster stops a job with SIGTERM (SLURM can send SIGUSR1 ahead of the end).

While ``Trainer.fit`` runs, both signals only set a flag. At the end of each step the ranks agree
(one scalar all-reduce per step: a rank that got no signal stops with the one that did), the
step is finished as an uninterrupted run would finish it (its log row, evaluation and cut), a
checkpoint is written at that step, and the process exits with :data:`PREEMPTED_EXIT_CODE` (75,
``EX_TEMPFAIL``: "temporary failure, run me again"); ``--resume RUN_DIR`` then continues
bit-for-bit. The handlers are installed for the life of ``fit`` only; the ones they replace
come back after it.
"""

from __future__ import annotations

import signal
import threading

import torch

PREEMPTED_EXIT_CODE = 75  # sysexits.h EX_TEMPFAIL: a scheduler can requeue on it
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))


class Preempted(SystemExit):
    """A run stopped by a stop signal after writing its checkpoint: a ``SystemExit`` with code
    :data:`PREEMPTED_EXIT_CODE`, so a script that does not catch it exits with that code too."""

    def __init__(self, message: str, step: int):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message, self.step = message, step

    def __str__(self) -> str:
        return self.message


class StopSignals:
    """A context manager: while open, SIGTERM and SIGUSR1 set :attr:`received` (the first
    signal's number) instead of ending the process. Outside the main thread (where Python
    cannot install handlers) it installs none."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, _frame) -> None:
        if self.received is None:
            self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()


def agreed_stop(accelerator, received: int | None) -> int | None:
    """The stop signal any rank got (the largest number when several did), the same on every
    rank, or None: one scalar all-reduce when there are several ranks."""
    if accelerator.num_processes == 1:
        return received
    flag = torch.tensor([received or 0], dtype=torch.int64, device=accelerator.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return int(flag.item()) or None


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: a worker leaves SIGUSR1, the scheduler's advance warning
    (SLURM's ``--signal=USR1@N`` reaches every process of the job), to the training process
    instead of dying of it mid-step. SIGTERM keeps its default: it is how multiprocessing stops
    the workers when the process exits, so a worker that ignored it would hang that exit."""
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
