"""Causal depthwise conv1d: causal-conv1d's CUDA kernel when installed (widths 2–4), else torch (any width)."""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import Tensor


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
        raise ValueError(f"x has shape {tuple(x.shape)}, expected (batch, dim, seqlen)")
    if weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"weight has shape {tuple(weight.shape)}, expected ({x.shape[1]}, width)")
    if bias is not None and bias.shape != (x.shape[1],):
        raise ValueError(f"bias has shape {tuple(bias.shape)}, expected ({x.shape[1]},)")
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    devices = {k: t.device for k, t in (("x", x), ("weight", weight), ("bias", bias)) if t is not None}
    if len(set(devices.values())) > 1:
        raise ValueError(f"inputs are on different devices: {devices}")
    if weight.shape[1] < 1:
        raise ValueError(f"weight has width {weight.shape[1]}, expected at least 1")


def causal_conv1d_fn(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None) -> Tensor:
    """x (b, d, l), weight (d, w) → (b, d, l). Differentiable."""
    _check(x, weight, bias, activation)
    if x.is_cuda and 2 <= weight.shape[1] <= 4:  # causal-conv1d's kernel covers widths 2-4
        try:
            mod = importlib.import_module("causal_conv1d")
            return mod.causal_conv1d_fn(x, weight, bias, activation)
        except ImportError:
            pass
    w = weight.shape[1]
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=w - 1, groups=x.shape[1])[..., : x.shape[-1]]
    return F.silu(out) if activation in ("silu", "swish") else out


def causal_conv1d_update(
    x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
) -> Tensor:
    """One decode step: x (b, d); conv_state (b, d, w) holds the last w inputs (oldest first) and
    is updated in place (shifted left, x appended). Returns (b, d)."""
    if conv_state.dim() != 3 or conv_state.shape[:2] != x.shape or conv_state.shape[2] != weight.shape[1]:
        raise ValueError(
            f"conv_state has shape {tuple(conv_state.shape)}, expected ({x.shape[0]}, {x.shape[1]}, {weight.shape[1]})"
        )
    conv_state.copy_(torch.cat([conv_state[:, :, 1:], x.unsqueeze(-1).to(conv_state.dtype)], dim=-1))
    out = (conv_state * weight[None]).sum(-1)
    if bias is not None:
        out = out + bias
    out = out.to(x.dtype)
    return F.silu(out) if activation in ("silu", "swish") else out
