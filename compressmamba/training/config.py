"""Recipes: YAML files with fixed sections, dotted command-line overrides, validation.

A recipe has top-level ``name``, ``seed``, ``task``, ``out_dir`` and the sections ``model``,
``data`` (free-form: the builder's keyword arguments, plus ``name``), and ``optim``, ``train``,
``reduction`` (fixed keys below; an unknown key is rejected with the list of valid ones).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    ssm_lr_factor: float = 1.0
    schedule: str = "constant"  # constant | cosine (both after linear warm-up)
    warmup_frac: float = 0.0
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.0
    grad_clip: float | None = None


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    eval_every: int = 100
    eval_batches: int | None = None
    eval_batch_size: int | None = None
    log_every: int = 10
    checkpoint_every: int | None = None
    grad_accum: int = 1
    mixed_precision: str = "no"  # no | bf16 | fp16
    num_workers: int = 0  # DataLoader worker processes building training batches (0: in-process)
    progress: bool = True


@dataclass
class ReductionConfig:
    mode: str = "none"  # tolerance | fixed | pragmatic | none
    tau: float = 0.01
    fraction: float = 0.1
    method: str | None = None  # None: each layer's default (LRU hankel, Mamba output)
    selection: str = "largest"  # largest | smallest | random
    attempts: list[int] | None = None
    n_attempts: int = 4
    window: float = 0.1
    gate: float = 0.95
    calib_batches: int = 4
    pragmatic_tolerance: float = 0.02
    plots: bool = True


_TOP = ("name", "seed", "task", "out_dir", "model", "data", "optim", "train", "reduction", "baseline")
_SECTIONS = {"optim": OptimConfig, "train": TrainConfig, "reduction": ReductionConfig}


@dataclass
class Recipe:
    name: str = "run"
    seed: int = 0
    task: str | None = None
    out_dir: str | None = None
    model: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    reduction: ReductionConfig = field(default_factory=ReductionConfig)
    baseline: dict = field(default_factory=dict)  # optional: distill | hnn (training/baselines.py)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["optim"]["betas"] = list(d["optim"]["betas"])
        return d

    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}/seed{self.seed}")


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a raw recipe mapping."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = _parse_value(value)
    return raw


def _section(cls, values: dict | None, section: str):
    values = dict(values or {})
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in recipe section '{section}'; valid keys: {valid}")
    types = {f.name: str(f.type) for f in fields(cls)}
    for k, v in values.items():
        values[k] = _coerce(v, types[k], f"{section}.{k}")
    return cls(**values)


def _coerce(v, annotation: str, where: str):
    """YAML reads 1e-3 (no dot) as a string: turn numbers into the field's type, or say why not."""
    if v is None:
        return v
    base = annotation.split("|")[0].strip()
    try:
        if base == "float" and not isinstance(v, bool):
            return float(v)
        if base == "int" and not isinstance(v, bool):
            if isinstance(v, float) and not v.is_integer():
                raise ValueError
            return int(float(v)) if isinstance(v, str) else int(v)
        if base.startswith("tuple"):
            return tuple(float(x) for x in v)
        if base == "bool" and not isinstance(v, bool):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{where} = {v!r}: expected {annotation}") from None
    return v


def recipe_from_dict(raw: dict) -> Recipe:
    unknown = sorted(set(raw) - set(_TOP))
    if unknown:
        raise ValueError(f"unknown top-level key(s) {unknown} in recipe; valid keys: {list(_TOP)}")
    for sec in ("model", "data"):
        if not isinstance(raw.get(sec), dict) or "name" not in raw[sec]:
            raise ValueError(f"recipe section '{sec}' must be a mapping with a 'name'")
    r = Recipe(
        name=str(raw.get("name", "run")),
        seed=int(raw.get("seed", 0)),
        task=raw.get("task"),
        out_dir=raw.get("out_dir"),
        model=dict(raw["model"]),
        data=dict(raw["data"]),
        **{k: _section(cls, raw.get(k), k) for k, cls in _SECTIONS.items()},
        baseline=dict(raw.get("baseline") or {}),
    )
    validate(r)
    return r


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} not found")
    raw = yaml.safe_load(path.read_text()) or {}
    raw.setdefault("name", path.stem if path.parent.name == "" else f"{path.parent.name}/{path.stem}")
    return recipe_from_dict(apply_overrides(raw, list(overrides)))


def _check(ok: bool, what: str, value, expected: str):
    if not ok:
        raise ValueError(f"{what} = {value!r}: expected {expected}")


def validate(r: Recipe) -> None:
    o, t, red = r.optim, r.train, r.reduction
    if r.baseline:
        from .baselines import parse_baseline

        parse_baseline(r.baseline)
    _check(o.lr > 0 and math.isfinite(o.lr), "optim.lr", o.lr, "a positive number")
    _check(o.schedule in ("constant", "cosine"), "optim.schedule", o.schedule, "'constant' or 'cosine'")
    _check(0 <= o.warmup_frac < 1, "optim.warmup_frac", o.warmup_frac, "a fraction in [0, 1)")
    _check(o.ssm_lr_factor > 0, "optim.ssm_lr_factor", o.ssm_lr_factor, "> 0")
    _check(t.steps >= 1, "train.steps", t.steps, ">= 1")
    _check(t.batch_size >= 1, "train.batch_size", t.batch_size, ">= 1")
    _check(t.eval_every >= 1, "train.eval_every", t.eval_every, ">= 1")
    _check(t.grad_accum >= 1, "train.grad_accum", t.grad_accum, ">= 1")
    _check(t.num_workers >= 0, "train.num_workers", t.num_workers, ">= 0")
    _check(t.mixed_precision in ("no", "bf16", "fp16"), "train.mixed_precision", t.mixed_precision, "no, bf16 or fp16")
    _check(
        red.mode in ("tolerance", "fixed", "pragmatic", "none"),
        "reduction.mode",
        red.mode,
        "tolerance, fixed, pragmatic or none",
    )
    _check(0 <= red.tau < 1, "reduction.tau", red.tau, "a fraction in [0, 1) of Hankel energy to discard")
    _check(0 < red.fraction < 1, "reduction.fraction", red.fraction, "a fraction in (0, 1)")
    _check(
        red.selection in ("largest", "smallest", "random"),
        "reduction.selection",
        red.selection,
        "largest, smallest or random",
    )
    _check(0 < red.gate <= 1, "reduction.gate", red.gate, "in (0, 1]")
    _check(0 < red.window <= 1, "reduction.window", red.window, "a fraction of train.steps in (0, 1]")
    _check(red.calib_batches >= 1, "reduction.calib_batches", red.calib_batches, ">= 1")
    if red.attempts is not None:
        _check(
            all(isinstance(s, int) and 1 <= s <= t.steps for s in red.attempts),
            "reduction.attempts",
            red.attempts,
            f"a list of steps in [1, {t.steps}]",
        )
