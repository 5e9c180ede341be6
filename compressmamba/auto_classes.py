"""compressmamba's model types in transformers' ``AutoConfig`` / ``AutoModelForCausalLM``, registered
when transformers' Auto classes are first imported, so that ``import compressmamba`` imports neither
torch nor transformers (the command line starts in a blink) and still is all that
``AutoModelForCausalLM.from_pretrained(RUN_DIR/model)`` needs.

The mechanism is Python's own import system: :func:`install` puts a finder on ``sys.meta_path``
that watches for ``transformers.models.auto.modeling_auto`` (the module that defines
``AutoModelForCausalLM``; ``from transformers import AutoModelForCausalLM`` imports it, and
``AutoConfig`` users reach it through any model loading) and, once that module has run, imports
:mod:`compressmamba.models`, whose families register through transformers' public
``AutoConfig.register`` / ``AutoModelForCausalLM.register`` (the hybrids' model classes are
stand-ins until a hybrid is first built: see ``models/hybrid.py``). When transformers' Auto
module is already imported, :func:`install` registers at once. docs/design.md "Start-up".
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

WATCHED = "transformers.models.auto.modeling_auto"


def register_auto_classes() -> None:
    """Register every family's model types with transformers' Auto classes (idempotent)."""
    importlib.import_module("compressmamba.models")


class _RegisterAfter(importlib.abc.Loader):
    """Runs the real loader, then registers compressmamba's classes."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        register_auto_classes()

    def __getattr__(self, name):  # get_source, is_package, ... of the real loader
        return getattr(self.loader, name)


class AutoClassesHook(importlib.abc.MetaPathFinder):
    """A ``sys.meta_path`` finder that wraps the loader of :data:`WATCHED`, once."""

    def find_spec(self, fullname, path, target=None):
        if fullname != WATCHED:
            return None
        uninstall()
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfter(spec.loader)
        return spec


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, AutoClassesHook)]


def install() -> None:
    """Register now when transformers' Auto classes are imported already, else when they are."""
    if WATCHED in sys.modules:
        register_auto_classes()
    elif not any(isinstance(f, AutoClassesHook) for f in sys.meta_path):
        sys.meta_path.insert(0, AutoClassesHook())
