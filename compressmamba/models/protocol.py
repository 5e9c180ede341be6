"""The compressible-model protocol: the only surface the trainer touches.

A model that can shrink while it trains offers

* ``model.ssm_layers() -> list[CompressibleLayer]``: the layers whose state can be cut, in order;
* ``model.state_sizes -> list[int]``: one state size per SSM layer (the same order);
* ``model.config`` (or the builder's config dict) records ``state_sizes`` so that a checkpoint
  rebuilds the cut shapes.

Each :class:`CompressibleLayer` offers

* ``state_size: int``;
* ``needs_calibration: bool``: ``True`` for input-dependent layers (Mamba) whose energy is
  estimated from statistics accumulated over calibration batches, ``False`` for LTI layers (LRU);
* ``start_stats()`` / ``pop_stats() -> dict[str, Tensor]`` (only when ``needs_calibration``):
  between the two calls every forward pass adds its per-state sums into the layer; the trainer
  sums the popped tensors across ranks (they must be plain sums, plus a ``count`` entry);
* ``default_energy_method: str`` (only a layer of a model of no registered family; a family's
  default is ``ModelFamily.default_energy_method``): the energy estimate used when a recipe names none;
* ``energy(stats, method) -> Tensor``: one non-negative float64 energy per state *coordinate*
  (shape ``(n,)``, or ``(G, n)`` for G groups that keep the same count), in the coordinates that
  ``truncate_`` selects from (balanced coordinates for the LRU, the diagonal modes for Mamba).
  A layer whose coordinates depend on the method (Mamba-2: its modes, or with ``balanced`` each
  group's balanced coordinates) keeps what its last ``energy`` call chose for the next
  ``truncate_``. ``stats`` is ``None`` for LTI layers;
* ``truncate_(keep) -> dict[str, StateMap | None]``: keep the coordinates ``keep`` (a sorted
  ``LongTensor`` of indices into ``energy``'s output), replacing the affected Parameters with
  fresh ones and updating ``state_size``. It returns, for every parameter it replaced (keyed by
  its name relative to the layer, as in ``layer.named_parameters()``), how to carry optimizer
  state over: a function mapping an old state tensor (Adam's ``exp_avg``/``exp_avg_sq``) to the
  new shape when coordinates are kept as they were (Mamba's selection), or ``None`` when the
  cut changed basis (LRU balanced truncation, Mamba-2's composed state projection) and the old
  moments do not belong to the new coordinates: the trainer then drops that parameter's
  optimizer state (Adam restarts for it with its own bias correction; the learning-rate
  schedule and step count go on). A parameter the cut adds (Mamba-2's first ``bc_proj``) starts
  with no optimizer state either.

Optimizer groups come from names that each module declares (never from tensor rank, and never
from attributes stuck on Parameter objects, which ``from_pretrained`` and ``truncate_`` drop):
a module's class attributes ``no_weight_decay_params`` and ``ssm_params`` list parameter names
relative to the module (``ssm_params`` get ``lr * ssm_lr_factor`` and no weight decay);
:func:`declared_parameter_names` expands them to the model's full names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from torch import Tensor

StateMap = Callable[[Tensor], Tensor]

IGNORE_INDEX = -100  # a label that is not a target (padding, the prompt of a recall task)

ENERGY_METHODS_LTI = ("hankel",)
SELECTIONS = ("largest", "smallest", "random")


@runtime_checkable
class CompressibleLayer(Protocol):
    state_size: int
    needs_calibration: bool

    def energy(self, stats: dict[str, Tensor] | None, method: str) -> Tensor: ...

    def truncate_(self, keep: Tensor) -> dict[str, StateMap | None]: ...


@runtime_checkable
class CompressibleModel(Protocol):
    def ssm_layers(self) -> list[CompressibleLayer]: ...

    @property
    def state_sizes(self) -> list[int]: ...


def next_token_pairs(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """A causal language model's predictions and targets: ``logits[:, t]`` predicts
    ``labels[:, t + 1]``, and labels equal to :data:`IGNORE_INDEX` do not count.

    logits (b, l, V), labels (b, l) → (b, l − 1, V), (b, l − 1). The LM's loss, evaluation,
    answer accuracy and distillation all read the pairs from here."""
    return logits[:, :-1], labels[:, 1:]


def declared_parameter_names(model, rule: str) -> set[str]:
    """Full parameter names of ``model`` that its modules list under the class attribute ``rule``
    (``"no_weight_decay_params"`` or ``"ssm_params"``). Raises ValueError for a declared name the
    module does not have (a rule that silently matches nothing would change training)."""
    names = set()
    for prefix, module in model.named_modules():
        own = dict(module.named_parameters())
        for name in getattr(type(module), rule, ()):
            if name not in own:
                raise ValueError(f"{type(module).__name__}.{rule} names {name!r}, which it has no parameter called")
            names.add(f"{prefix}.{name}" if prefix else name)
    return names
