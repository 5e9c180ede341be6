"""When a cut is attempted and how many states each layer keeps."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..reduction import rank_for_energy, select_states
from .config import ReductionConfig


def attempt_steps(cfg: ReductionConfig, total_steps: int) -> list[int]:
    """Steps after which a cut is attempted: explicit ``attempts``, else ``n_attempts`` evenly
    spaced in ``(start, window]`` of training (default 4 in the first 10 %; ``start`` > 0 trains
    that fraction before the first attempt)."""
    if cfg.mode == "none":
        return []
    if cfg.attempts is not None:
        return sorted(set(int(s) for s in cfg.attempts))
    first, span = cfg.start * total_steps, (cfg.window - cfg.start) * total_steps
    steps = {max(1, round(first + span * (k + 1) / cfg.n_attempts)) for k in range(cfg.n_attempts)}
    return sorted(s for s in steps if s < total_steps)


@dataclass
class LayerDecision:
    old: int
    new: int
    keep: Tensor  # sorted indices into the layer's energy coordinates: (new,) or (G, new)
    energy_kept: float  # fraction of the layer's energy kept


def rule_rank(energy: Tensor, cfg: ReductionConfig, layer: str = "") -> int:
    """How many states (per group) the layer keeps by ``cfg``'s rule: the τ rule (tolerance), a
    fixed fraction (fixed, pragmatic), or all of them (none). ``energy`` as in :func:`decide_layer`."""
    e2 = _checked(energy, layer)
    n = e2.shape[1]
    if cfg.mode == "tolerance":
        return rank_for_energy(torch.sort(e2, dim=1, descending=True).values.sum(0), cfg.tau, layer=layer)
    if cfg.mode in ("fixed", "pragmatic"):
        return max(1, int((1 - cfg.fraction) * n))
    return n


def stepped_rank(initial: int, target: int, attempt: int, n_attempts: int) -> int:
    """``reduction.budget: final``: the size after attempt ``attempt`` (1-based) of ``n_attempts``
    on the geometric path from ``initial`` states to ``target`` (reached at the last attempt)."""
    if not 1 <= attempt <= n_attempts:
        raise ValueError(f"attempt = {attempt}: expected 1..{n_attempts}")
    if not 1 <= target <= initial:
        raise ValueError(f"target = {target}: expected 1..{initial} (the initial size)")
    return max(target, min(initial, round(initial * (target / initial) ** (attempt / n_attempts))))


def _checked(energy: Tensor, layer: str) -> Tensor:
    e = torch.as_tensor(energy, dtype=torch.float64)
    e2 = e if e.dim() == 2 else e.flatten()[None]
    if not torch.isfinite(e2).all():
        raise ValueError(f"layer {layer}: energy contains NaN or inf; refusing to cut ({e2.flatten().tolist()[:8]}...)")
    if (e2 < 0).any():
        raise ValueError(f"layer {layer}: energy must be >= 0, got min {e2.min().item():.3g}")
    return e2


def decide_layer(
    energy: Tensor, cfg: ReductionConfig, generator: torch.Generator, layer: str = "", rank: int | None = None
) -> LayerDecision:
    """The τ rule (tolerance) or a fixed fraction (or a given ``rank``), the gate, then the
    selection mode.

    ``energy`` is (n,), or (G, n) for a layer of G groups of n states that all keep the same
    count r (Mamba-2): the τ rule then reads the group-summed profile of each group's energies
    sorted descending (keeping r per group keeps that much), each group selects its own r states,
    and ``keep`` is (G, r)."""
    grouped = torch.as_tensor(energy).dim() == 2
    e2 = _checked(energy, layer)
    n = e2.shape[1]
    r = rule_rank(e2, cfg, layer) if rank is None else min(n, rank)
    # a given rank (a planned path) is cut to even when close to n; the rule's rank passes the gate
    if r >= n or (rank is None and r >= cfg.gate * n) or n == 1:
        keep = torch.arange(n).expand(e2.shape[0], n)
        return LayerDecision(n, n, keep if grouped else keep[0], 1.0)
    keep = torch.stack([select_states(row, r, cfg.selection, generator) for row in e2])
    total = e2.sum().item()
    kept = e2.gather(1, keep).sum().item() / total if total > 0 else 1.0
    return LayerDecision(n, r, keep if grouped else keep[0], kept)
