"""Causal depthwise conv1d. ``backend="auto"`` picks causal-conv1d's CUDA kernel when it is
installed (widths 2–4), else the Triton kernel on CUDA tensors (widths up to MAX_WIDTH), else
torch's grouped conv1d (any device, any width)."""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backend_checks import check_triton_device, empty_like_graph, shape_error


def causal_conv1d_ref(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None) -> Tensor:
    """Readable specification: out[:, c, t] = Σ_k w[c, k] x[:, c, t − (w − 1) + k] + bias[c]."""
    b, d, l = x.shape
    w = weight.shape[1]
    xp = F.pad(x, (w - 1, 0))
    out = sum(weight[None, :, k, None] * xp[:, :, k : k + l] for k in range(w))
    if bias is not None:
        out = out + bias[None, :, None]
    return F.silu(out) if activation in ("silu", "swish") else out


def _check(x, weight, bias, activation):
    if x.dim() != 3:
        shape_error("x", x, "(batch, dim, seqlen)")
    if weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        shape_error("weight", weight, f"({x.shape[1]}, width)")
    if bias is not None and bias.shape != (x.shape[1],):
        shape_error("bias", bias, f"({x.shape[1]},)")
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    devices = {k: t.device for k, t in (("x", x), ("weight", weight), ("bias", bias)) if t is not None}
    if len(set(devices.values())) > 1:
        raise ValueError(f"inputs are on different devices: {devices}")
    if weight.shape[1] < 1:
        raise ValueError(f"weight has width {weight.shape[1]}, expected at least 1")


BACKENDS = ("auto", "causal_conv1d", "triton", "torch", "ref")


def _causal_conv1d_module():
    try:
        return importlib.import_module("causal_conv1d")
    except ImportError:
        return None


def causal_conv1d_fn(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None, backend: str = "auto"
) -> Tensor:
    """x (b, d, l), weight (d, w) → (b, d, l) in x's dtype. Differentiable in x, weight and bias.

    ``backend``: ``auto`` (see the module doc), ``causal_conv1d`` (the CUDA package, widths 2–4),
    ``triton`` (CUDA tensors, or CPU ones under ``TRITON_INTERPRET=1``), ``torch``, ``ref``.
    """
    _check(x, weight, bias, activation)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton":
        check_triton_device(x, "causal_conv1d_fn")
    if x.numel() == 0:  # batch, dim or seqlen 0
        return empty_like_graph(x.shape, x.dtype, x, weight, bias)
    w = weight.shape[1]
    silu = activation in ("silu", "swish")
    if backend == "auto" and x.is_cuda:
        backend = "causal_conv1d" if 2 <= w <= 4 and _causal_conv1d_module() is not None else "triton"
        if backend == "triton" and w > _triton_max_width():
            backend = "torch"
    if backend == "causal_conv1d":
        mod = _causal_conv1d_module()
        if mod is None:
            raise ValueError(
                "backend='causal_conv1d' needs the causal-conv1d package: pip install 'compressmamba[cuda]'"
            )
        if not (x.is_cuda and 2 <= w <= 4):
            raise ValueError(f"backend='causal_conv1d' runs CUDA tensors of widths 2-4, got {x.device} width {w}")
        return mod.causal_conv1d_fn(x, weight, bias, activation)
    if backend == "triton":
        from .kernel import causal_conv1d_triton

        return causal_conv1d_triton(x, weight, bias, silu)
    if backend == "ref":
        return causal_conv1d_ref(x, weight, bias, activation)
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=w - 1, groups=x.shape[1])[..., : x.shape[-1]]
    return F.silu(out) if silu else out


def _triton_max_width() -> int:
    from .kernel import MAX_WIDTH

    return MAX_WIDTH


def causal_conv1d_update(
    x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
) -> Tensor:
    """One decode step: x (b, d); conv_state (b, d, w) holds the last w inputs (oldest first) and
    is updated in place (shifted left, x appended). Returns (b, d)."""
    if conv_state.dim() != 3 or conv_state.shape[:2] != x.shape or conv_state.shape[2] != weight.shape[1]:
        shape_error("conv_state", conv_state, f"({x.shape[0]}, {x.shape[1]}, {weight.shape[1]})")
    conv_state.copy_(torch.cat([conv_state[:, :, 1:], x.unsqueeze(-1).to(conv_state.dtype)], dim=-1))
    out = (conv_state * weight[None]).sum(-1)
    if bias is not None:
        out = out + bias
    out = out.to(x.dtype)
    return F.silu(out) if activation in ("silu", "swish") else out
