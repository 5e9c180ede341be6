"""Name -> builder registries for models and datasets, so a recipe names what it wants, and the
model families: one :class:`ModelFamily` spec per family holds every fact the package reads about
it (builder and recipe keys, energy methods, checkpoint formats, export). Adding a family is one
module that calls :func:`register_family` plus its line in ``_MODEL_MODULES`` (docs/adding-a-model.md).

A model builder takes the recipe's ``model`` mapping (with ``state_sizes`` overridden on resume)
and returns an ``nn.Module`` whose ``forward(**batch)`` returns an object with ``.loss`` and
``.logits``. A dataset builder takes the recipe's ``data`` mapping and returns a
:class:`DataSplits`. Builders register on import of their module; :func:`build_model` and
:func:`build_data` import the library's own modules first.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.utils.data import Dataset

MODELS: dict[str, Callable[..., Any]] = {}
DATASETS: dict[str, Callable[..., Any]] = {}

# Modules whose import registers builders; missing ones are skipped so partial installs work.
# the dataset facts (DataSplits.info) a model builder takes beside its recipe keys
MODEL_INFO_KEYS = ("d_input", "n_classes", "vocab_size", "pair", "seq_len")

_MODEL_MODULES = (
    "compressmamba.models.lru",
    "compressmamba.models.mamba",
    "compressmamba.models.mamba2",
    "compressmamba.models.mamba3",
    "compressmamba.models.hybrid",
)
_DATA_MODULES = (
    "compressmamba.data.mnist",
    "compressmamba.data.cifar",
    "compressmamba.data.lra",
    "compressmamba.data.text",
    "compressmamba.data.mqar",
)


@dataclass
class DataSplits:
    """Train / validation / test datasets; items are dicts of tensors (see README "Recipes").

    ``info`` carries what the model needs to know (``d_input``, ``n_classes``, ``vocab_size``,
    ``seq_len``, ``task``: ``"classification"`` or ``"lm"``; ``answer_accuracy``: an LM task scored
    by the accuracy of its labelled positions, as a recall task's answers).
    """

    train: Dataset
    val: Dataset
    test: Dataset | None
    info: dict[str, Any]


def _register(table: dict, kind: str, name: str):
    def deco(fn):
        if name in table and table[name] is not fn:
            raise ValueError(f"{kind} {name!r} is registered twice")
        table[name] = fn
        return fn

    return deco


def register_model(name: str):
    return _register(MODELS, "model", name)


@dataclass(frozen=True)
class ModelFamily:
    """Everything the package knows about one model family, in one place.

    * ``name``: the recipe's ``model.name``; ``build``: the recipe builder (its named parameters
      are the recipe's ``model`` keys; it takes ``state_sizes`` on resume and the dataset's
      ``MODEL_INFO_KEYS``);
    * ``energy_methods``: the ``reduction.method`` values its layers offer;
      ``default_energy_method``: the one a recipe or ``compress`` that names none uses (the one
      place it is written; left out: the first of ``energy_methods``);
    * ``recipe_energy_methods(model_cfg)``: where they depend on the model a recipe's ``model``
      mapping builds, the methods that model offers (checked when the recipe is validated);
    * ``causal_lm``: its ``PreTrainedModel`` class with per-layer ``state_sizes`` (None: no
      Hugging Face form); ``model_types``: the ``config.json`` model types loaded as that class
      (our own first, then the stock transformers type whose weight names it shares);
    * ``mamba_ssm_layer`` and ``from_mamba_ssm(ssm_cfg, shared_fields) -> config``: the mamba-ssm
      ``MambaLMHeadModel`` layer type it reads, and how that config becomes ours;
    * ``transformers_export``: ``(config class, model class, config fields shared with ours)`` of
      the stock transformers family that ``export_transformers`` writes (zero-padded to one N);
    * ``load(path_or_id, config_dict, **kwargs)`` / ``export(model, out_dir, uniform=False)``: a
      family that loads and exports its own way (the hybrids, through transformers' stock
      classes; ``causal_lm`` is then the base its per-type classes share, registered with the
      Auto classes by the family itself).
    """

    name: str
    build: Callable[..., Any]
    energy_methods: tuple[str, ...]
    default_energy_method: str = ""
    causal_lm: type | None = None
    model_types: tuple[str, ...] = ()
    mamba_ssm_layer: str | None = None
    from_mamba_ssm: Callable[[dict, dict], Any] | None = None
    transformers_export: tuple[str, str, tuple[str, ...]] | None = None
    recipe_energy_methods: Callable[[dict], tuple[str, ...]] | None = None
    load: Callable[..., Any] | None = None
    export: Callable[..., Any] | None = None
    description: str = field(default="", compare=False)

    def __post_init__(self):
        if not self.default_energy_method:
            object.__setattr__(self, "default_energy_method", self.energy_methods[0])
        if self.default_energy_method not in self.energy_methods:
            raise ValueError(
                f"model family {self.name!r}: default_energy_method = {self.default_energy_method!r}, expected one "
                f"of its energy_methods {list(self.energy_methods)}"
            )


FAMILIES: dict[str, ModelFamily] = {}


def register_family(spec: ModelFamily) -> ModelFamily:
    """Register ``spec`` (and its builder as model ``spec.name``); returns it."""
    if spec.name in FAMILIES and FAMILIES[spec.name] != spec:
        raise ValueError(f"model family {spec.name!r} is registered twice")
    register_model(spec.name)(spec.build)
    FAMILIES[spec.name] = spec
    if spec.causal_lm is not None and spec.model_types and spec.load is None:
        _register_auto(spec.model_types[0], spec.causal_lm)
    return spec


def _register_auto(model_type: str, model_cls) -> None:
    """``AutoConfig``/``AutoModelForCausalLM`` know our ``model_type`` (once per process)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        AutoConfig.register(model_type, model_cls.config_class)
        AutoModelForCausalLM.register(model_cls.config_class, model_cls)
    except ValueError:  # already registered (module reloaded)
        pass


def families() -> dict[str, ModelFamily]:
    """Every registered family by name (the library's own modules imported first)."""
    _import_all(_MODEL_MODULES)
    return dict(FAMILIES)


def model_family(name: str) -> ModelFamily | None:
    """The family registered as ``name`` (None: a bare builder, or unknown)."""
    return families().get(name)


def family_of_model_type(model_type: str) -> ModelFamily | None:
    """The family that loads ``config.json``'s ``model_type`` (ours or stock), or None."""
    return next((f for f in families().values() if model_type in f.model_types), None)


def family_of_model(model) -> ModelFamily | None:
    """The family whose module defines ``model``'s class or the class it derives from (each
    family's classes live beside its builder; FSDP2's ``fully_shard`` swaps in a subclass made
    on the fly), or None."""
    for cls in type(model).__mro__:
        family = next((f for f in families().values() if f.build.__module__ == cls.__module__), None)
        if family is not None:
            return family
    return None


def default_energy_method(model, layer=None) -> str:
    """The energy method a cut of ``model`` uses when none is named: its family's
    ``default_energy_method``; a model of no registered family: its layer's own
    ``default_energy_method`` (models/protocol.py)."""
    family = family_of_model(model)
    if family is not None:
        return family.default_energy_method
    if getattr(layer, "default_energy_method", None):
        return layer.default_energy_method
    raise ValueError(
        f"reduction.method = None for a {type(model).__name__} of no registered model family: name the method"
    )


def family_of_mamba_ssm_layer(layer: str) -> ModelFamily | None:
    """The family that reads mamba-ssm checkpoints whose ``ssm_cfg.layer`` is ``layer``, or None."""
    return next((f for f in families().values() if f.mamba_ssm_layer == layer), None)


def register_dataset(name: str):
    return _register(DATASETS, "dataset", name)


def _import_all(modules):
    for m in modules:
        try:
            importlib.import_module(m)
        except ModuleNotFoundError as e:
            if e.name != m:
                raise


def _lookup(table: dict, modules, kind: str, name: str):
    _import_all(modules)
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; known: {sorted(table)}")
    return table[name]


def model_builder(name: str) -> Callable[..., Any]:
    """The builder registered as model ``name`` (ValueError listing the known ones)."""
    return _lookup(MODELS, _MODEL_MODULES, "model", name)


def dataset_builder(name: str) -> Callable[..., Any]:
    """The builder registered as dataset ``name`` (ValueError listing the known ones)."""
    return _lookup(DATASETS, _DATA_MODULES, "dataset", name)


def build_model(cfg: dict, **extra):
    """Build the model named by ``cfg["name"]`` from the rest of ``cfg`` (and ``extra``)."""
    cfg = dict(cfg)
    name = cfg.pop("name")
    return _lookup(MODELS, _MODEL_MODULES, "model", name)(**cfg, **extra)


def build_data(cfg: dict, **extra) -> DataSplits:
    """Build the dataset named by ``cfg["name"]`` from the rest of ``cfg`` (and ``extra``)."""
    cfg = dict(cfg)
    name = cfg.pop("name")
    return _lookup(DATASETS, _DATA_MODULES, "dataset", name)(**cfg, **extra)
