"""Deterministic, resumable batching: the batch of a step is a pure function of (seed, step,
rank), so a resumed run sees exactly the batches it would have seen."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from .preemption import ignore_stop_signals


class StepBatches:
    def __init__(self, dataset: Dataset, batch_size: int, seed: int, rank: int = 0, world: int = 1, micro: int = 1):
        self.ds, self.bs, self.seed, self.rank, self.world, self.micro = dataset, batch_size, seed, rank, world, micro
        self.per_step = batch_size * world * micro
        self.n = len(dataset)
        if self.n < self.per_step:
            raise ValueError(
                f"dataset has {self.n} items but one step needs {self.per_step} "
                f"(batch_size {batch_size} × processes {world} × grad_accum {micro}): lower train.batch_size"
            )
        self.steps_per_epoch = self.n // self.per_step
        self._epoch, self._perm = None, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm, self._epoch = torch.randperm(self.n, generator=g), epoch
        return self._perm

    def indices(self, step: int, micro: int = 0) -> list[int]:
        """Indices of this rank's micro-batch ``micro`` of 0-based ``step``."""
        epoch, k = divmod(step, self.steps_per_epoch)
        start = k * self.per_step + (micro * self.world + self.rank) * self.bs
        if self.n > MATERIALISE_MAX:  # a pretraining corpus: no n-long permutation in memory
            return feistel_permute(np.arange(start, start + self.bs), self.n, self.seed * 100_003 + epoch).tolist()
        return self._permutation(epoch)[start : start + self.bs].tolist()

    def batch(self, step: int, micro: int = 0) -> dict:
        return default_collate([self.ds[i] for i in self.indices(step, micro)])

    def stream(self, start: int, stop: int, num_workers: int = 0):
        """Yield this rank's micro-batches of steps ``start .. stop - 1`` in order (``grad_accum``
        per step): the same batches as :meth:`batch`, built by ``num_workers`` DataLoader workers
        when > 0 (the indices are still drawn here, so the order does not depend on them)."""
        if num_workers == 0:
            for step in range(start, stop):
                for micro in range(self.micro):
                    yield self.batch(step, micro)
            return
        sampler = _StepSampler(self, start, stop)
        # its own generator: starting workers must not draw from the global RNG (dropout masks)
        g = torch.Generator().manual_seed(self.seed * 100_003 + start)
        loader = DataLoader(
            self.ds,
            batch_sampler=sampler,
            num_workers=num_workers,
            collate_fn=default_collate,
            generator=g,
            worker_init_fn=ignore_stop_signals,  # a preempted job's stop signal is the trainer's to handle
        )
        yield from loader


MATERIALISE_MAX = 1 << 22  # datasets up to this many items shuffle with one randperm (32 MB)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def feistel_permute(i: np.ndarray, n: int, key: int, rounds: int = 4) -> np.ndarray:
    """Position ``i`` (any shape, values in [0, n)) of a keyed pseudo-random permutation of
    [0, n), computed without materialising it: a balanced Feistel network on the smallest even
    number of bits covering n, cycle-walked back into [0, n) (fewer than 4 passes expected)."""
    if n < 1 or np.any((i < 0) | (i >= n)):
        raise IndexError(f"positions must lie in [0, {n})")
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask, shift = np.uint64((1 << half) - 1), np.uint64(half)
    with np.errstate(over="ignore"):
        keys = _mix(
            np.uint64(key % (1 << 64)) + np.arange(1, rounds + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        )
    out = np.asarray(i, dtype=np.uint64).copy()
    todo = np.ones(out.shape, dtype=bool)
    while todo.any():
        y = out[todo]
        for k in keys:
            left, right = y >> shift, y & mask
            y = (right << shift) | (left ^ (_mix(right ^ k) & mask))
        out[todo] = y
        todo = out >= np.uint64(n)
    return out.astype(np.int64)


class _StepSampler:
    """Index lists of steps ``start .. stop - 1`` (all micro-batches), drawn lazily."""

    def __init__(self, batches: StepBatches, start: int, stop: int):
        self.b, self.start, self.stop = batches, start, stop

    def __len__(self):
        return max(0, self.stop - self.start) * self.b.micro

    def __iter__(self):
        for step in range(self.start, self.stop):
            for micro in range(self.b.micro):
                yield self.b.indices(step, micro)


def shard_batches(dataset: Dataset, batch_size: int, rank: int, world: int, limit: int | None = None):
    """This rank's evaluation batches (items rank, rank + world, ...), in order."""
    idx = range(rank, len(dataset), world)  # lazy: no list as long as the validation set
    n_batches = (len(idx) + batch_size - 1) // batch_size
    if limit is not None:
        n_batches = min(n_batches, limit)
    for b in range(n_batches):
        yield default_collate([dataset[i] for i in idx[b * batch_size : (b + 1) * batch_size]])
