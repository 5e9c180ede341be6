"""A test hook: with ``COMPRESSMAMBA_RANK_HASHES=1`` in the environment, every rank of a
multi-process run appends a hash of its parameters to ``RUN_DIR/rank<i>_hashes.jsonl`` after
each cut and at the end, so the DDP tests can check that the ranks cut and trained alike
(tests/conftest.py sets it). Production runs write no such file."""

from __future__ import annotations

import hashlib
import json
import os

import torch

from .sharded import full_tensor

ENV = "COMPRESSMAMBA_RANK_HASHES"


def param_hash(model: torch.nn.Module) -> str:
    """A short SHA-256 of the parameters (names and bytes; buffers, such as BatchNorm
    statistics, are per rank and left out)."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(full_tensor(p).contiguous().numpy().tobytes())  # a sharded parameter whole
    return h.hexdigest()[:16]


class RankHashes:
    """Callback: a row ``{step, what, sizes, hash}`` per cut and at the end of training."""

    def on_cut(self, trainer, report) -> None:
        self._write(trainer, "cut")

    def on_end(self, trainer) -> None:
        self._write(trainer, "end")

    @staticmethod
    def _write(trainer, what: str) -> None:
        model, acc = trainer.model, trainer.accelerator
        row = {"step": trainer.step, "what": what, "sizes": model.state_sizes, "hash": param_hash(model)}
        with open(trainer.run_dir / f"rank{acc.process_index}_hashes.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


def wanted(num_processes: int) -> bool:
    """The hook is asked for and the run has several ranks."""
    return num_processes > 1 and os.environ.get(ENV) == "1"
