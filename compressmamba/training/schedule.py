"""When a cut is attempted and how many states each layer keeps."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..reduction import rank_for_energy, select_states
from .config import ReductionConfig


def attempt_steps(cfg: ReductionConfig, total_steps: int) -> list[int]:
    """Steps after which a cut is attempted: explicit ``attempts``, else ``n_attempts`` evenly
    spaced within the first ``window`` of training (default 4 in the first 10 %)."""
    if cfg.mode == "none":
        return []
    if cfg.attempts is not None:
        return sorted(set(int(s) for s in cfg.attempts))
    span = cfg.window * total_steps
    steps = {max(1, round(span * (k + 1) / cfg.n_attempts)) for k in range(cfg.n_attempts)}
    return sorted(s for s in steps if s < total_steps)


@dataclass
class LayerDecision:
    old: int
    new: int
    keep: Tensor  # sorted indices into the layer's energy coordinates: (new,) or (G, new)
    energy_kept: float  # fraction of the layer's energy kept


def decide_layer(energy: Tensor, cfg: ReductionConfig, generator: torch.Generator, layer: str = "") -> LayerDecision:
    """The τ rule (tolerance) or a fixed fraction, the gate, then the selection mode.

    ``energy`` is (n,), or (G, n) for a layer of G groups of n states that all keep the same
    count r (Mamba-2): the τ rule then reads the group-summed profile of each group's energies
    sorted descending (keeping r per group keeps that much), each group selects its own r states,
    and ``keep`` is (G, r)."""
    e = torch.as_tensor(energy, dtype=torch.float64)
    grouped = e.dim() == 2
    e2 = e if grouped else e.flatten()[None]
    n = e2.shape[1]
    if not torch.isfinite(e2).all():
        raise ValueError(f"layer {layer}: energy contains NaN or inf; refusing to cut ({e2.flatten().tolist()[:8]}...)")
    if (e2 < 0).any():
        raise ValueError(f"layer {layer}: energy must be >= 0, got min {e2.min().item():.3g}")
    profile = torch.sort(e2, dim=1, descending=True).values.sum(0)
    if cfg.mode == "tolerance":
        r = rank_for_energy(profile, cfg.tau, layer=layer)
    elif cfg.mode in ("fixed", "pragmatic"):
        r = max(1, int((1 - cfg.fraction) * n))
    else:
        r = n
    if r >= cfg.gate * n or n == 1:
        keep = torch.arange(n).expand(e2.shape[0], n)
        return LayerDecision(n, n, keep if grouped else keep[0], 1.0)
    keep = torch.stack([select_states(row, r, cfg.selection, generator) for row in e2])
    total = e2.sum().item()
    kept = e2.gather(1, keep).sum().item() / total if total > 0 else 1.0
    return LayerDecision(n, r, keep if grouped else keep[0], kept)
