"""Recipes: YAML files with fixed sections, dotted command-line overrides, validation.

A recipe has top-level ``name``, ``seed``, ``task``, ``out_dir`` and the sections ``model``,
``data`` (the registered builder's keyword arguments, plus ``name``), and ``optim``, ``train``,
``reduction`` (fixed keys below). An unknown key in any section is rejected with the list of
valid ones (for ``model`` and ``data``: the builder's named parameters), and every value is
checked against its range.

A recipe may name ``base: OTHER`` (a file relative to its own folder, or a shipped recipe's name
such as ``scifar/baseline``) and state only what differs: its keys go on top of the base's,
sections merging key by key; bases may chain, a cycle is refused. The resolved recipe (what a
run's ``config.yaml`` holds) is complete and has no ``base``.
"""

from __future__ import annotations

import copy
import inspect
import math
import numbers
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..registry import MODEL_INFO_KEYS


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
    report_to: str | list[str] | None = None  # Accelerate trackers: tensorboard, wandb, mlflow, comet_ml, trackio ...
    activation_checkpointing: bool = False  # recompute each block's activations in backward (sharded.py)


@dataclass
class ReductionConfig:
    mode: str = "none"  # tolerance | fixed | pragmatic | none
    tau: float = 0.01
    fraction: float = 0.1
    method: str | None = None  # None: each layer's default (LRU hankel, Mamba output); Mamba-2 also balanced
    selection: str = "largest"  # largest | smallest | random
    attempts: list[int] | None = None
    n_attempts: int = 4
    window: float = 0.1
    start: float = 0.0  # attempts evenly spaced in (start, window] of train.steps: a warm-up before the first
    budget: str = "per_attempt"  # per_attempt: τ bounds each cut | final: τ sets each layer's final size at the
    # first attempt, reached geometrically over the attempts
    moments: str = "slice"  # Adam moments across a cut: slice (kept states keep theirs) | reset (a fresh AdamW)
    rewarm_steps: int = 0  # after each cut the learning rate ramps linearly back up over this many steps
    gate: float = 0.95
    calib_batches: int = 4
    pragmatic_tolerance: float = 0.02
    plots: bool = True
    uniform: bool = False  # one N for every layer at each cut: the largest the rule chose (stock runtimes' form)


_TOP = ("name", "seed", "task", "out_dir", "model", "data", "optim", "train", "reduction", "baseline")
TASKS = ("classification", "lm")
# keys the trainer passes to the builders itself (from the dataset's info, the checkpoint, the seed)
_TRAINER_MODEL_KEYS = (*MODEL_INFO_KEYS, "state_sizes")  # the dataset's facts, and the sizes on resume
_TRAINER_DATA_KEYS = ("seed",)
# Keys a resume may change without changing what the run computes (where it writes, how often it
# logs or checkpoints, progress bars, workers that build the same batches, trackers, plots).
HARMLESS_KEYS = frozenset(
    {
        "name",
        "out_dir",
        "train.progress",
        "train.num_workers",
        "train.log_every",
        "train.checkpoint_every",
        "train.activation_checkpointing",
        "train.report_to",
        "reduction.plots",
    }
)
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
        try:
            parsed = _parse_value(value)
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(e)})") from None
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = parsed
    return raw


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where (1-based line and column)."""
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(e, 'problem', None) or str(e).splitlines()[0]}{where}"


def _section(cls, values: dict | None, section: str):
    if values is not None and not isinstance(values, dict):
        raise ValueError(
            f"recipe section '{section}' = {values!r}: expected a mapping of its keys "
            f"(e.g. {section}: {{{fields(cls)[0].name}: ...}} or {section}.{fields(cls)[0].name}=...)"
        )
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


def _seed(v) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
        raise ValueError(f"seed = {v!r}: expected a non-negative integer")
    return int(v)


def parse_seeds(text: str) -> list[int]:
    """A ``--seeds`` option: ``0,1,2`` or ``0-4`` (inclusive) or a mix (``0-2,7``); distinct,
    non-negative. ValueError naming the option, the value and the form expected."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                lo, hi = part.split("-", 1)
                seeds += range(int(lo), int(hi) + 1)
            else:
                seeds.append(int(part))
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected comma-separated integers or ranges like 0-4") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: expected distinct non-negative seeds")
    return seeds


def recipe_from_dict(raw: dict) -> Recipe:
    if "base" in raw:
        raise ValueError(
            f"recipe key base = {raw['base']!r} is resolved when a recipe file is read: use "
            "load_recipe(path) or read_recipe(path), not a mapping that still holds it"
        )
    unknown = sorted(set(raw) - set(_TOP))
    if unknown:
        raise ValueError(f"unknown top-level key(s) {unknown} in recipe; valid keys: {list(_TOP)}")
    for sec in ("model", "data"):
        if not isinstance(raw.get(sec), dict) or "name" not in raw[sec]:
            raise ValueError(f"recipe section '{sec}' must be a mapping with a 'name'")
    r = Recipe(
        name=str(raw.get("name", "run")),
        seed=_seed(raw.get("seed", 0)),
        task=raw.get("task"),
        out_dir=raw.get("out_dir"),
        model=dict(raw["model"]),
        data=dict(raw["data"]),
        **{k: _section(cls, raw.get(k), k) for k, cls in _SECTIONS.items()},
        baseline=dict(raw.get("baseline") or {}),
    )
    validate(r)
    return r


def _merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``: mappings merge key by key (recursively), anything else
    (numbers, strings, lists) is replaced whole."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _base_path(base, child: Path) -> Path:
    """The file a recipe's ``base:`` names: a path relative to the recipe's own folder, else a
    shipped recipe's name (``scifar/baseline``)."""
    from ..recipe_index import resolve_recipe

    if not isinstance(base, str) or not base:
        raise ValueError(f"recipe {child}: base = {base!r}: expected a recipe file or a shipped recipe's name")
    beside = child.parent / base
    if beside.is_file():
        return beside
    try:
        return resolve_recipe(base)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"recipe {child}: base {base!r} is not a file beside it ({beside}) and {e}") from None


def read_recipe(path: str | Path) -> dict:
    """The raw mapping of the recipe at ``path`` (a file or a shipped recipe's name) with its
    ``base:`` chain merged in: the recipe's keys on top of its base's (sections merge key by key),
    so a sweep file states only what differs. ``name`` is never inherited: a recipe without one
    is named after its file (``family/stem``). No ``base`` key is left in the result."""
    from ..recipe_index import resolve_recipe

    path = resolve_recipe(path)
    raw = _read_chain(path, ())
    raw.setdefault("name", path.stem if path.parent.name == "" else f"{path.parent.name}/{path.stem}")
    return raw


def _read_chain(path: Path, chain: tuple[Path, ...]) -> dict:
    here = path.resolve()
    if here in chain:
        loop = " -> ".join(str(p) for p in (*chain, here))
        raise ValueError(f"recipe {chain[0]}: its base chain is a cycle ({loop}); remove one of the `base:` keys")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"recipe {path} is not valid YAML: {_yaml_problem(e)}") from None
    except UnicodeDecodeError as e:
        raise ValueError(
            f"recipe {path} is not a text file (byte {e.start} is not UTF-8): expected a YAML recipe"
        ) from None
    if not isinstance(raw, dict):
        raise ValueError(
            f"recipe {path} holds a {type(raw).__name__}: expected a mapping of sections (name, model, ...)"
        )
    if "base" not in raw:
        return raw
    base = raw.pop("base")
    inherited = _read_chain(_base_path(base, path), (*chain, here))
    inherited.pop("name", None)  # a recipe is named by its own file, not its base's
    return _merge(inherited, raw)


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """The recipe at ``path`` (a YAML file, or the name of a shipped recipe such as
    ``lm/stdlib_demo``), its ``base:`` chain merged (:func:`read_recipe`), with dotted
    ``key=value`` overrides applied, every key checked."""
    return recipe_from_dict(apply_overrides(read_recipe(path), list(overrides)))


def _check(ok: bool, what: str, value, expected: str):
    if not ok:
        raise ValueError(f"{what} = {value!r}: expected {expected}")


def builder_keys(kind: str, name: str) -> list[str] | None:
    """The recipe keys the registered ``kind`` ("model" or "data") builder ``name`` accepts: its
    named parameters, less those the trainer passes itself. None when it names none (a builder
    of ``**kwargs`` only: nothing to check against)."""
    from ..registry import dataset_builder, model_builder

    fn = model_builder(name) if kind == "model" else dataset_builder(name)
    params = inspect.signature(fn).parameters.values()
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    passed = _TRAINER_MODEL_KEYS if kind == "model" else _TRAINER_DATA_KEYS
    return [k for k in named if k not in passed] or None


def _check_builder_section(section: str, values: dict) -> None:
    """Every key of the ``model`` / ``data`` section must be a parameter of its builder."""
    try:
        valid = builder_keys(section, values["name"])
    except ValueError as e:  # an unknown name: say which key holds it
        raise ValueError(f"{section}.name = {values['name']!r}: {e}") from None
    if valid is None:
        return
    unknown = sorted(set(values) - {"name"} - set(valid))
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in recipe section '{section}' ({section} {values['name']!r}); "
            f"valid keys: {valid}"
        )


def _positive_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1


def _check_model(m: dict) -> None:
    for key in ("n_layers", "d_model", "expand", "d_conv", "head_dim", "n_groups", "chunk_size"):
        if key in m:
            _check(_positive_int(m[key]), f"model.{key}", m[key], "a positive integer")
    for key in ("state_size", "state_sizes"):
        v = m.get(key)
        if v is not None:
            ok = _positive_int(v) or (isinstance(v, list) and v and all(_positive_int(x) for x in v))
            _check(ok, f"model.{key}", v, "a positive integer or a list of positive integers (one per layer)")
            if isinstance(v, list) and _positive_int(m.get("n_layers")) and len(v) != m["n_layers"]:
                _check(False, f"model.{key}", v, f"{m['n_layers']} sizes, one per layer (model.n_layers = "
                       f"{m['n_layers']}), or one integer for every layer")


def _check_optim(o: OptimConfig) -> None:
    _check(o.lr > 0 and math.isfinite(o.lr), "optim.lr", o.lr, "a positive number")
    _check(o.schedule in ("constant", "cosine"), "optim.schedule", o.schedule, "'constant' or 'cosine'")
    _check(0 <= o.warmup_frac < 1, "optim.warmup_frac", o.warmup_frac, "a fraction in [0, 1)")
    _check(o.warmup_steps is None or o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, ">= 0 or null")
    _check(o.ssm_lr_factor > 0, "optim.ssm_lr_factor", o.ssm_lr_factor, "> 0")
    _check(o.weight_decay >= 0 and math.isfinite(o.weight_decay), "optim.weight_decay", o.weight_decay, ">= 0")
    _check(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", o.min_lr_ratio, "a fraction in [0, 1]")
    _check(
        len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
        "optim.betas",
        list(o.betas),
        "two numbers in [0, 1), e.g. [0.9, 0.999]",
    )
    _check(
        o.grad_clip is None or (o.grad_clip >= 0 and math.isfinite(o.grad_clip)),
        "optim.grad_clip",
        o.grad_clip,
        "a gradient-norm bound >= 0 (0 or null: no clipping)",
    )


def _check_train(t: TrainConfig) -> None:
    _check(t.steps >= 1, "train.steps", t.steps, ">= 1")
    _check(t.batch_size >= 1, "train.batch_size", t.batch_size, ">= 1")
    _check(t.eval_every >= 1, "train.eval_every", t.eval_every, ">= 1")
    _check(t.log_every >= 1, "train.log_every", t.log_every, ">= 1")
    _check(t.eval_batches is None or t.eval_batches >= 1, "train.eval_batches", t.eval_batches, ">= 1 or null (all)")
    _check(
        t.eval_batch_size is None or t.eval_batch_size >= 1,
        "train.eval_batch_size",
        t.eval_batch_size,
        ">= 1 or null (train.batch_size)",
    )
    _check(
        t.checkpoint_every is None or t.checkpoint_every >= 1,
        "train.checkpoint_every",
        t.checkpoint_every,
        ">= 1 or null (train.eval_every)",
    )
    names = [t.report_to] if isinstance(t.report_to, str) else t.report_to
    _check(
        names is None or (isinstance(names, list) and all(isinstance(x, str) and x for x in names)),
        "train.report_to",
        t.report_to,
        "a tracker name (tensorboard, wandb, mlflow, comet_ml, trackio, ...) or a list of them",
    )
    _check(t.grad_accum >= 1, "train.grad_accum", t.grad_accum, ">= 1")
    _check(t.num_workers >= 0, "train.num_workers", t.num_workers, ">= 0")
    _check(t.mixed_precision in ("no", "bf16", "fp16"), "train.mixed_precision", t.mixed_precision, "no, bf16 or fp16")


def _check_reduction(red: ReductionConfig, model_cfg: dict, steps: int) -> None:
    from ..registry import model_family

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
    _check(
        0 <= red.start < red.window,
        "reduction.start",
        red.start,
        f"a fraction of train.steps in [0, reduction.window = {red.window})",
    )
    _check(red.budget in ("per_attempt", "final"), "reduction.budget", red.budget, "per_attempt or final")
    _check(
        red.budget == "per_attempt" or red.mode == "tolerance" or red.mode == "none",
        "reduction.budget",
        red.budget,
        f"per_attempt with reduction.mode {red.mode!r} (final spreads the tolerance rule's sizes: mode tolerance)",
    )
    _check(red.moments in ("slice", "reset"), "reduction.moments", red.moments, "slice or reset")
    _check(red.rewarm_steps >= 0, "reduction.rewarm_steps", red.rewarm_steps, ">= 0 (0: no re-warm)")
    _check(red.calib_batches >= 1, "reduction.calib_batches", red.calib_batches, ">= 1")
    _check(
        red.pragmatic_tolerance >= 0, "reduction.pragmatic_tolerance", red.pragmatic_tolerance, ">= 0 (a score drop)"
    )
    model_name = model_cfg.get("name")
    family = model_family(model_name)
    methods = family.energy_methods if family is not None else None
    if family is not None and family.recipe_energy_methods is not None:
        methods = family.recipe_energy_methods(model_cfg)
    why = " (balanced needs a scalar decay per head: Mamba-2 layers only)" if red.method == "balanced" else ""
    default = f", {family.default_energy_method}" if family is not None else ""
    _check(  # other models: checked by their layers at the cut
        red.method is None or methods is None or red.method in methods,
        "reduction.method",
        red.method,
        f"null (the family's default{default}) or one of {list(methods or ())} for model {model_name!r}{why}",
    )
    if red.mode != "none" and red.attempts is None:
        _check(red.n_attempts >= 1, "reduction.n_attempts", red.n_attempts, f">= 1 in reduction.mode {red.mode!r}")
    if red.attempts is not None:
        _check(
            isinstance(red.attempts, list)
            and all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= steps for s in red.attempts),
            "reduction.attempts",
            red.attempts,
            f"a list of steps in [1, {steps}]",
        )


# --- the paper's baselines (training/baselines.py implements them) -------------------------
@dataclass
class DistillConfig:
    teacher: str = ""
    temperature: float = 2.0
    alpha: float = 0.5


@dataclass
class HNNConfig:
    lam: float = 1e-4
    tau: float = 0.05  # post-hoc truncation: fraction of Hankel energy each layer may discard
    calib_batches: int = 2


_BASELINES = {"distill": DistillConfig, "hnn": HNNConfig}


def parse_baseline(cfg: dict) -> DistillConfig | HNNConfig:
    """Validate a recipe's ``baseline:`` mapping; unknown names or keys raise ValueError."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in _BASELINES:
        raise ValueError(f"baseline.name = {name!r}: expected one of {sorted(_BASELINES)}")
    cls = _BASELINES[name]
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(cfg) - set(valid))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in recipe section 'baseline' ({name}); valid keys: {valid}")
    out = cls(**{k: (float(v) if isinstance(getattr(cls(), k), float) else v) for k, v in cfg.items()})
    if isinstance(out, DistillConfig):
        if not out.teacher:
            raise ValueError("baseline.teacher = '': expected the run folder of a trained teacher")
        if out.temperature <= 0:
            raise ValueError(f"baseline.temperature = {out.temperature!r}: expected > 0")
        if not 0 <= out.alpha <= 1:
            raise ValueError(f"baseline.alpha = {out.alpha!r}: expected a weight in [0, 1]")
    else:
        if out.lam < 0:
            raise ValueError(f"baseline.lam = {out.lam!r}: expected >= 0")
        if not 0 <= out.tau < 1:
            raise ValueError(f"baseline.tau = {out.tau!r}: expected a fraction in [0, 1)")
    return out


def validate(r: Recipe) -> None:
    """Every key and value of ``r``: ValueError naming the key, the value and what was expected."""
    if r.baseline:
        parse_baseline(r.baseline)
    _check(r.task is None or r.task in TASKS, "task", r.task, f"null (from the dataset) or one of {list(TASKS)}")
    _check_builder_section("model", r.model)
    _check_builder_section("data", r.data)
    _check_model(r.model)
    _check_optim(r.optim)
    _check_train(r.train)
    _check_reduction(r.reduction, r.model, r.train.steps)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


_ABSENT = "<absent>"


def recipe_differences(old: dict, new: dict) -> list[dict]:
    """The keys (dotted) whose values differ between two recipe mappings, outside
    :data:`HARMLESS_KEYS`: ``[{"key", "old", "new"}]``. ``old`` (a checkpoint's recipe, maybe
    from an older version) is first filled with today's defaults."""
    try:
        old = recipe_from_dict(old).to_dict()
    except (ValueError, TypeError):
        pass
    a, b = _flatten(old), _flatten(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if key not in HARMLESS_KEYS and _norm(va) != _norm(vb):
            diffs.append({"key": key, "old": va, "new": vb})
    return diffs


def _norm(v):
    return list(v) if isinstance(v, tuple) else v
