"""Training FLOPs, counted analytically from a model's modules (docs/flops.md states every rule).

A step's count is a list of :class:`Term` (one per projection, convolution, scan, attention, head
of every layer at that layer's own N), each with its forward and backward floating-point
operations (a multiply-add is 2). The rules:

* a matrix product (``nn.Linear``, the dt projection, Mamba-2's ``bc_proj``, the SSD's chunk
  products, attention's scores) costs ``2 m n k`` forward and twice that backward (the gradient of
  each operand), so 3x in all; a product whose input needs no gradient (a classifier's linear
  encoder of raw features) costs 1x backward;
* the selective scan (Mamba-1) is counted op by op: 7 per (token, channel, state) forward (Δ·A,
  exp, B·(Δu), the state update's multiply and add, C·h's multiply and add) and 15 backward (the
  reverse recurrence, dC, dB, d(Δu), dΔ, dA); per (token, channel) 7 forward (bias, softplus, Δu,
  the D skip, the SiLU(z) gate) and twice that backward. A kernel that recomputes the forward
  states in its backward (to save memory) does that work on top; it is not counted (model FLOPs);
* Mamba-2's SSD is counted as its chunked algorithm computes it (kernels/ssd/cpu.py: chunks of
  Q = min(chunk_size, l), the last one zero-padded): C·Bᵀ per group, the masked (Q, Q) product
  per head, the chunk states, the state passing and the inter-chunk output, plus its
  elementwise decays; elementwise work costs twice its forward backward;
* the LRU's FFT convolution: ``5 M log2 M`` per complex FFT of length M = 2l, 6 per complex
  product; a complex matrix product is 4 real ones;
* attention (a hybrid's host layers): its projections as above, the scores ``QKᵀ`` and ``AV``
  over the full l x l (a causal kernel that skips the upper triangle does about half);
* a fused mixture of experts: each token through ``num_experts_per_tok`` experts.

Not counted: norms, activations outside the scan, residual additions, dropout, the loss, the
embedding lookup (no arithmetic), the optimizer step (about 10 per parameter) and evaluation.
A family declares how its modules count with :func:`register_flops` (a module class, looked up
along the MRO, so a subclass counts as its base until it registers its own); an ``nn.Linear``
counts by itself, and any other module counts as the sum of its children.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

SCAN_FWD, SCAN_BWD = 7, 15  # per (token, channel, state) of the selective scan
CHANNEL_FWD = 7  # per (token, channel): bias, softplus, Δu, D skip (2), SiLU(z) gate (2)


@dataclass(frozen=True)
class Term:
    """One counted piece of a training step: ``name`` (the module's name in the model, or the
    module's name plus the part: ``backbone.layers.0.mixer.scan``), ``kind`` (``matmul``,
    ``conv``, ``scan``, ``elementwise``), forward and backward FLOPs."""

    name: str
    kind: str
    forward: float
    backward: float
    in_scan: bool = False  # part of the recurrence (what a layer's calibration statistics run again)

    @property
    def total(self) -> float:
        return self.forward + self.backward


Counter = Callable[[nn.Module, str, int, int], list[Term]]
_COUNTERS: dict[type, Counter] = {}


def register_flops(cls: type) -> Callable[[Counter], Counter]:
    """Declare how modules of ``cls`` (and its subclasses) count: ``fn(module, name, b, l)``
    returns its :class:`Term` list for a batch of b sequences of l positions (children included:
    the walk does not enter a module that has a counter)."""

    def deco(fn: Counter) -> Counter:
        _COUNTERS[cls] = fn
        return fn

    return deco


def unregister_flops(cls: type) -> None:
    """Forget ``cls``'s declared count (a toy family in a test); KeyError if it has none."""
    del _COUNTERS[cls]


def matmul(name: str, m: float, n: float, k: float, input_grad: bool = True, in_scan: bool = False) -> Term:
    """(m, k) @ (k, n): 2mnk forward; backward 2mnk per operand that needs a gradient."""
    f = 2.0 * m * n * k
    return Term(name, "matmul", f, f * (2 if input_grad else 1), in_scan)


def elementwise(name: str, forward: float, in_scan: bool = False) -> Term:
    """Elementwise work: twice its forward backward (each product's two operands)."""
    return Term(name, "elementwise", float(forward), 2.0 * forward, in_scan)


def linear(name: str, lin: nn.Linear, rows: int, input_grad: bool = True) -> list[Term]:
    """``nn.Linear`` over ``rows`` rows: the product, and its bias (an add per output, and its
    gradient a sum over the rows)."""
    out = [matmul(name, rows, lin.out_features, lin.in_features, input_grad)]
    if lin.bias is not None:
        out.append(Term(f"{name}.bias", "elementwise", float(rows * lin.out_features), float(rows * lin.out_features)))
    return out


def depthwise_conv(name: str, channels: int, width: int, tokens: int, bias: bool) -> list[Term]:
    """A causal depthwise convolution of ``width`` taps: 2·width per (token, channel) forward;
    backward the gradient of its input and of its taps, 2x."""
    f = 2.0 * width * channels * tokens
    out = [Term(name, "conv", f, 2 * f)]
    if bias:
        out.append(Term(f"{name}.bias", "elementwise", float(channels * tokens), float(channels * tokens)))
    return out


def module_terms(module: nn.Module, b: int, l: int, name: str = "") -> list[Term]:
    """Every term of one training step of ``module`` on b sequences of l positions: its
    registered counter, else an ``nn.Linear`` over b·l rows, else its children's terms (each
    reference to a shared child counts: a block that runs in two places is counted twice)."""
    for cls in type(module).__mro__:
        if cls in _COUNTERS:
            return _COUNTERS[cls](module, name, b, l)
    if isinstance(module, nn.Linear):
        return linear(name, module, b * l)
    out, leaf = host_terms(module, name, b, l)
    if leaf:
        return out
    for child_name, child in module.named_children():
        out += module_terms(child, b, l, f"{name}.{child_name}" if name else child_name)
    return out


def host_terms(module: nn.Module, name: str, b: int, l: int) -> tuple[list[Term], bool]:
    """What a hybrid's host layer adds to its children's terms: attention's scores, a fused
    mixture of experts (whose 3-D weights are no ``nn.Linear``; then its children are not
    walked: ``True`` second), or a module that applies its own 2-D ``weight`` to every token
    (a MoE router). ([], False) for any other module."""
    if hasattr(module, "q_proj") and hasattr(module, "k_proj") and hasattr(module, "o_proj"):
        heads, hd = _attention_shape(module)
        return [matmul(f"{name}.scores", b * heads * l, l, hd), matmul(f"{name}.values", b * heads * l, hd, l)], False
    own = list(module.parameters(recurse=False))
    if own and all(p.dim() == 3 for p in own) and len({p.shape[0] for p in own}) == 1:
        n_exp = own[0].shape[0]
        k = _top_k(module, n_exp)
        per_expert = sum(p.numel() for p in own) / n_exp
        return [matmul(f"{name}.experts", b * l * k, per_expert, 1)], True
    weight = getattr(module, "weight", None)
    if isinstance(weight, nn.Parameter) and weight.dim() == 2 and not isinstance(module, nn.Embedding):
        return [matmul(name, b * l, weight.shape[0], weight.shape[1])], False  # a router: a bare per-token product
    return [], False


def _attention_shape(module: nn.Module) -> tuple[int, int]:
    """(query heads, head dim) of an attention module."""
    cfg = getattr(module, "config", None)
    hd = getattr(module, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return module.q_proj.out_features // hd, hd


def _top_k(module: nn.Module, n_experts: int) -> int:
    for owner in (module, getattr(module, "config", None)):
        for key in ("top_k", "num_experts_per_tok"):
            k = getattr(owner, key, None)
            if isinstance(k, int) and k > 0:
                return min(k, n_experts)
    return n_experts  # no routing found: every expert (an upper bound)


def step_terms(model: nn.Module, b: int, l: int) -> list[Term]:
    """The terms of one training micro-batch of b sequences of l positions."""
    _register_builtin()
    if b < 1 or l < 1:
        raise ValueError(f"flops: batch {b} x length {l}: expected positive sizes")
    return module_terms(model, b, l)


def train_step_flops(model: nn.Module, b: int, l: int) -> float:
    """Forward plus backward FLOPs of one micro-batch (b sequences of l positions)."""
    return sum(t.total for t in step_terms(model, b, l))


def forward_flops(model: nn.Module, b: int, l: int) -> float:
    """Forward FLOPs of one micro-batch: what a calibration or evaluation pass costs."""
    return sum(t.forward for t in step_terms(model, b, l))


def calibration_flops(model: nn.Module, b: int, l: int) -> float:
    """One calibration batch: the forward pass plus each input-dependent layer's statistics,
    counted as one more forward of its scan (the statistics run the layer's recurrence again)."""
    terms = step_terms(model, b, l)
    return sum(t.forward for t in terms) + sum(t.forward for t in terms if t.in_scan)


def batch_shape(batch: dict) -> tuple[int, int]:
    """(b, l) of a batch: its ``input_ids`` or ``inputs`` (b, l, ...); (b, 1) for one row each."""
    first = batch.get("input_ids", batch.get("inputs"))
    return first.shape[0], first.shape[1] if first.dim() > 1 else 1


class FlopMeter:
    """Counts of a model that changes only at cuts, kept per (batch shape, state sizes)."""

    def __init__(self):
        self._cache: dict[tuple, tuple[float, float]] = {}

    def _counts(self, model: nn.Module, batch: dict) -> tuple[float, float]:
        b, l = batch_shape(batch)
        key = (b, l, tuple(getattr(model, "state_sizes", ())), sum(p.numel() for p in model.parameters()))
        if key not in self._cache:
            self._cache[key] = (train_step_flops(model, b, l), calibration_flops(model, b, l))
        return self._cache[key]

    def train(self, model: nn.Module, batch: dict) -> float:
        """Forward and backward FLOPs of ``model`` on this micro-batch."""
        return self._counts(model, batch)[0]

    def calibration(self, model: nn.Module, batch: dict) -> float:
        """FLOPs of one calibration pass of ``model`` on ``batch``."""
        return self._counts(model, batch)[1]


_BUILTIN = []


def _register_builtin() -> None:
    """The library's own families (imported here, once, so this module imports without them)."""
    if _BUILTIN:
        return
    from . import flops_models  # noqa: F401  (registers the counters)

    _BUILTIN.append(True)
