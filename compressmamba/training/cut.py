"""The compression event: calibrate, measure energy, decide sizes (identically on every rank),
truncate, and report."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from accelerate.utils import broadcast_object_list
from torch import nn

from ..registry import default_energy_method
from .config import ReductionConfig
from .schedule import LayerDecision, decide_layer


@dataclass
class CutReport:
    step: int
    old_sizes: list[int]
    new_sizes: list[int]
    energy_kept: list[float]
    energies: list[list[float]] = field(default_factory=list)  # per layer, sorted descending
    kept: list[list[int]] = field(default_factory=list)  # per layer, positions in `energies` kept
    maps: dict = field(default_factory=dict)  # qualified param name → state map or None
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return self.old_sizes != self.new_sizes

    def row(self) -> dict:
        """The fields of this cut's metrics.jsonl row (with kind="cut"; the caller adds step,
        wall time and its own fields)."""
        return dict(
            kind="cut",
            old_sizes=self.old_sizes,
            new_sizes=self.new_sizes,
            energy_kept=self.energy_kept,
            energies=self.energies,
            kept=self.kept,
            seconds=self.seconds,
        )


def _layer_names(model: nn.Module) -> dict[int, str]:
    return {id(m): name for name, m in model.named_modules()}


@torch.no_grad()
def calibrate(model: nn.Module, layers, batches, accelerator) -> list[dict | None]:
    """Accumulate the layers' statistics over ``batches`` (eval mode, no grad) and sum them
    across ranks. Returns one stats dict per layer (None for LTI layers)."""
    needs = [getattr(layer, "needs_calibration", False) for layer in layers]
    if not any(needs):
        return [None] * len(layers)
    was_training = model.training
    model.eval()
    for layer, need in zip(layers, needs):
        if need:
            layer.start_stats()
    try:
        for batch in batches:
            model(**batch)
    finally:
        stats = [layer.pop_stats() if need else None for layer, need in zip(layers, needs)]
        model.train(was_training)
    out = []
    for s in stats:
        if s is None:
            out.append(None)
            continue
        out.append({k: accelerator.reduce(v.to(accelerator.device), reduction="sum").cpu() for k, v in s.items()})
    return out


def _sorted_positions(order: torch.Tensor, keep: list[int]) -> list[int]:
    """Where the kept state indices stand in the spectrum sorted by ``order`` (descending energy):
    the top ones under ``largest`` selection, others under ``smallest`` or ``random``."""
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel())
    return sorted(position[torch.tensor(keep, dtype=torch.long)].tolist())


def _flat(keep: list, n: int) -> list[int]:
    """(G, r) per-group indices into G groups of n states → indices into the flattened G·n."""
    if keep and isinstance(keep[0], list):
        return [g * n + k for g, row in enumerate(keep) for k in row]
    return keep


def compression_event(
    model: nn.Module,
    cfg: ReductionConfig,
    step: int,
    batches,
    accelerator,
    generator: torch.Generator,
    plan: Callable[[int, torch.Tensor], int] | None = None,
    target: nn.Module | None = None,
) -> CutReport:
    """Cut every layer of ``model`` (the unwrapped module) by ``cfg``'s rule at ``step``, or to
    the sizes ``plan(layer_index, energy)`` gives (``reduction.budget: final``). ``target``: cut
    that model instead (an unsharded copy of a sharded ``model``, which is calibrated)."""
    t0 = time.perf_counter()
    cut_model = model if target is None else target
    layers = cut_model.ssm_layers()
    names = _layer_names(cut_model)
    before = [layer.state_size for layer in layers]  # N, not the count of energies (Mamba-3: modes)
    stats = calibrate(model, model.ssm_layers(), batches, accelerator)
    decisions: list[LayerDecision] = []
    energies, orders, raw = [], [], []
    for i, (layer, s) in enumerate(zip(layers, stats)):
        method = cfg.method or default_energy_method(model, layer)
        e = layer.energy(s, method).detach().to(torch.float64).cpu()
        e_sorted, order = torch.sort(e.flatten(), descending=True)  # (G, n) energies report as G·n states
        energies.append(e_sorted.tolist())
        orders.append(order)
        raw.append(e)
        rank = plan(i, e) if plan is not None else None
        decisions.append(decide_layer(e, cfg, generator, layer=names.get(id(layer), "?"), rank=rank))
    if cfg.uniform and len({d.new for d in decisions}) > 1:
        # one N for every layer: the largest the rule chose, so every layer keeps at least its share
        r = max(d.new for d in decisions)
        decisions = [
            decide_layer(e, cfg, generator, layer=names.get(id(layer), "?"), rank=r) for layer, e in zip(layers, raw)
        ]
    # rank 0 decides for everyone: every rank then cuts the same states
    box = [[(d.old, d.new, d.keep.tolist(), d.energy_kept) for d in decisions]]
    if accelerator.num_processes > 1:
        broadcast_object_list(box, from_process=0)
    maps = {}
    for layer, (old, new, keep, _) in zip(layers, box[0]):
        if new < old:
            prefix = names[id(layer)]
            for k, fn in layer.truncate_(torch.tensor(keep, dtype=torch.long)).items():
                maps[f"{prefix}.{k}" if prefix else k] = fn
    return CutReport(
        step=step,
        old_sizes=before,
        new_sizes=[layer.state_size for layer in layers],
        energy_kept=[d[3] for d in box[0]],
        energies=energies,
        kept=[_sorted_positions(order, _flat(keep, old)) for order, (old, _, keep, _) in zip(orders, box[0])],
        maps=maps,
        seconds=time.perf_counter() - t0,
    )
