"""Which states a cut keeps: the τ rule, the gate, and the selection modes."""

from __future__ import annotations

import torch
from torch import Tensor

SELECTIONS = ("largest", "smallest", "random")


def select_states(energy: Tensor, r: int, mode: str = "largest", generator: torch.Generator | None = None) -> Tensor:
    """Sorted indices of the ``r`` states to keep from per-state ``energy`` (n,).

    ``largest`` keeps the r highest energies (the method); ``smallest`` the r lowest and
    ``random`` r uniformly drawn with ``generator`` (the ablations).
    """
    energy = torch.as_tensor(energy, dtype=torch.float64)
    n = energy.numel()
    if not 1 <= r <= n:
        raise ValueError(f"r must be in [1, {n}], got {r}")
    if not torch.isfinite(energy).all():
        raise ValueError(f"energy contains NaN or inf: {energy.tolist()}")
    if mode == "largest":
        idx = torch.argsort(energy, descending=True, stable=True)[:r]
    elif mode == "smallest":
        idx = torch.argsort(energy, descending=False, stable=True)[:r]
    elif mode == "random":
        idx = torch.randperm(n, generator=generator)[:r]
    else:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {mode!r}")
    return torch.sort(idx).values
