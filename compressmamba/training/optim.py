"""AdamW with parameter groups built from tags, the learning-rate schedule, and the optimizer
surgery after a cut.

Moment policy across a cut (what ``carry_optimizer_state`` does, per parameter):
* the same Parameter object survives: its Adam state is kept exactly;
* the layer returned a state map (a selection of coordinates, e.g. Mamba's kept states): the
  moments are sliced with the same indices, the per-parameter step is kept;
* the layer returned ``None`` (a change of basis, e.g. the LRU's balanced truncation): the old
  moments do not belong to the new coordinates, so that parameter's state is dropped and Adam
  restarts for it with its own bias correction (torch's AdamW keeps a per-parameter ``step``).
The learning-rate schedule is a pure function of the global step, so it goes on unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..models.protocol import declared_parameter_names
from .config import OptimConfig


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Groups from the names the model's modules declare (models/protocol.py): ``ssm_params`` →
    lr × ssm_lr_factor, no weight decay; ``no_weight_decay_params`` → no weight decay; everything
    else → lr, weight_decay. Biases and norm weights (1-D tensors) are not decayed either."""
    ssm = declared_parameter_names(model, "ssm_params")
    no_decay = declared_parameter_names(model, "no_weight_decay_params")
    groups = {"decay": [], "no_decay": [], "ssm": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name in ssm:
            groups["ssm"].append(p)
        elif name in no_decay or p.dim() < 2:
            groups["no_decay"].append(p)
        else:
            groups["decay"].append(p)
    out = [
        {"params": groups["decay"], "weight_decay": cfg.weight_decay, "lr_scale": 1.0, "name": "decay"},
        {"params": groups["no_decay"], "weight_decay": 0.0, "lr_scale": 1.0, "name": "no_decay"},
        {"params": groups["ssm"], "weight_decay": 0.0, "lr_scale": cfg.ssm_lr_factor, "name": "ssm"},
    ]
    for g in out:
        g["lr"] = cfg.lr * g["lr_scale"]
    return [g for g in out if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas))


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based): linear warm-up, then constant
    or cosine decay to ``min_lr_ratio``."""
    warm = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_frac * total)
    if warm > 0 and step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def rewarm_factor(step: int, last_cut: int | None, rewarm_steps: int) -> float:
    """``reduction.rewarm_steps``: the multiplier of the learning rate ``step - last_cut`` steps
    after a cut, rising linearly from 1/(rewarm_steps + 1) to 1 (1 outside the ramp)."""
    if last_cut is None or rewarm_steps <= 0 or step < last_cut:
        return 1.0
    return min(1.0, (step - last_cut + 1) / (rewarm_steps + 1))


def set_lr(optimizer: torch.optim.Optimizer, step: int, total: int, cfg: OptimConfig, scale: float = 1.0) -> float:
    """Set every group's learning rate for ``step`` (times ``scale``, e.g. a re-warm after a cut)."""
    f = lr_factor(step, total, cfg) * scale
    for g in optimizer.param_groups:
        g["lr"] = cfg.lr * g.get("lr_scale", 1.0) * f
    return cfg.lr * f


def snapshot_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """name → (Parameter, its optimizer state) before a cut."""
    return {name: (p, optimizer.state.get(p)) for name, p in model.named_parameters()}


def carry_optimizer_state(model: nn.Module, new_opt: torch.optim.Optimizer, before: dict, maps: dict) -> dict:
    """Fill ``new_opt``'s state from ``before`` following the policy in the module docstring.

    ``maps``: qualified parameter name → state map or None, as returned by the layers'
    ``truncate_``. Returns counts {"kept", "sliced", "dropped"} for the log.
    """
    counts = {"kept": 0, "sliced": 0, "dropped": 0}
    for name, p in model.named_parameters():
        old_p, state = before.get(name, (None, None))
        if state is None:
            continue
        if old_p is p:
            new_opt.state[p] = state
            counts["kept"] += 1
        elif maps.get(name) is not None:
            fn = maps[name]
            new_opt.state[p] = {
                k: (fn(v) if torch.is_tensor(v) and v.shape == old_p.shape else v) for k, v in state.items()
            }
            counts["sliced"] += 1
        else:
            counts["dropped"] += 1
    return counts
