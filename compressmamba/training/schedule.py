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
    keep: Tensor  # sorted indices into the layer's energy coordinates
    energy_kept: float  # fraction of the layer's energy kept


def decide_layer(energy: Tensor, cfg: ReductionConfig, generator: torch.Generator, layer: str = "") -> LayerDecision:
    """The τ rule (tolerance) or a fixed fraction, the gate, then the selection mode."""
    e = torch.as_tensor(energy, dtype=torch.float64).flatten()
    n = e.numel()
    if not torch.isfinite(e).all():
        raise ValueError(f"layer {layer}: energy contains NaN or inf; refusing to cut ({e.tolist()[:8]}...)")
    if (e < 0).any():
        raise ValueError(f"layer {layer}: energy must be >= 0, got min {e.min().item():.3g}")
    e_sorted = torch.sort(e, descending=True).values
    if cfg.mode == "tolerance":
        r = rank_for_energy(e_sorted, cfg.tau, layer=layer)
    elif cfg.mode in ("fixed", "pragmatic"):
        r = max(1, int((1 - cfg.fraction) * n))
    else:
        r = n
    if r >= cfg.gate * n or n == 1:
        return LayerDecision(n, n, torch.arange(n), 1.0)
    keep = select_states(e, r, cfg.selection, generator)
    total = e.sum().item()
    return LayerDecision(n, r, keep, e[keep].sum().item() / total if total > 0 else 1.0)
