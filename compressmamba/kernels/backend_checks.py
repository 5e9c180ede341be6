"""Checks shared by the kernel dispatchers: where the Triton kernels can run, and empty inputs."""

from __future__ import annotations

import importlib
import os

import torch
from torch import Tensor


def check_triton_device(x: Tensor, op: str) -> None:
    """ValueError, in words, when ``backend='triton'`` is asked for on CPU tensors without the
    Triton interpreter (the kernels run on CUDA tensors; on the CPU only under TRITON_INTERPRET=1)."""
    if x.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1":
        return
    raise ValueError(
        f"{op}: backend='triton' got tensors on {x.device}, but the Triton kernels run on CUDA tensors "
        "(or on CPU tensors under the Triton interpreter, TRITON_INTERPRET=1 set before compressmamba is "
        "imported); use backend='cpu' (or 'auto') for CPU tensors, or move them to a GPU"
    )


def triton_available(module: str) -> bool:
    """Whether the Triton kernels of ``module`` (e.g. ``compressmamba.kernels.ssd.scan``) import."""
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


def empty_like_graph(shape, dtype, *inputs: Tensor | None) -> Tensor:
    """Zeros of ``shape``/``dtype`` that stay in the autograd graph of ``inputs`` (so a loss over
    an empty batch still backpropagates, giving zero gradients) — the output of an op whose
    inputs have a zero-sized dimension."""
    out = torch.zeros(shape, dtype=dtype, device=next(t for t in inputs if t is not None).device)
    for t in inputs:
        if t is not None and t.requires_grad:
            out = out + t.sum().to(dtype) * 0
    return out
