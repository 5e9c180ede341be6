"""Deterministic, resumable batching: the batch of a step is a pure function of (seed, step,
rank), so a resumed run sees exactly the batches it would have seen."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, default_collate


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
        perm = self._permutation(epoch)
        start = k * self.per_step + (micro * self.world + self.rank) * self.bs
        return perm[start : start + self.bs].tolist()

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
            self.ds, batch_sampler=sampler, num_workers=num_workers, collate_fn=default_collate, generator=g
        )
        yield from loader


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
    idx = list(range(rank, len(dataset), world))
    n_batches = (len(idx) + batch_size - 1) // batch_size
    if limit is not None:
        n_batches = min(n_batches, limit)
    for b in range(n_batches):
        yield default_collate([dataset[i] for i in idx[b * batch_size : (b + 1) * batch_size]])
