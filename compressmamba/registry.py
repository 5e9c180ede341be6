"""Name -> builder registries for models and datasets, so a recipe names what it wants.

A model builder takes the recipe's ``model`` mapping (with ``state_sizes`` overridden on resume)
and returns an ``nn.Module`` whose ``forward(**batch)`` returns an object with ``.loss`` and
``.logits``. A dataset builder takes the recipe's ``data`` mapping and returns a
:class:`DataSplits`. Builders register on import of their module; :func:`build_model` and
:func:`build_data` import the library's own modules first.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

MODELS: dict[str, Callable[..., Any]] = {}
DATASETS: dict[str, Callable[..., Any]] = {}

# Modules whose import registers builders; missing ones are skipped so partial installs work.
# the dataset facts (DataSplits.info) a model builder takes beside its recipe keys
MODEL_INFO_KEYS = ("d_input", "n_classes", "vocab_size", "pair", "seq_len")

_MODEL_MODULES = ("compressmamba.models.lru", "compressmamba.models.mamba", "compressmamba.models.mamba2")
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
