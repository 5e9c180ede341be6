"""compressmamba: in-training compression of state-space models (CompreSSM) in PyTorch.

Importing the package imports neither torch nor transformers: the model types register with
transformers' Auto classes when those are first imported (:mod:`compressmamba.auto_classes`), so
``import compressmamba`` is all ``AutoModelForCausalLM.from_pretrained(RUN_DIR/model)`` needs."""

__version__ = "0.1.0"

from .auto_classes import install as _install_auto_classes  # noqa: E402

_install_auto_classes()
