"""Checks shared by the kernel dispatchers: input shapes, devices and dtypes, which backend runs,
where the Triton kernels can run, and empty inputs."""

from __future__ import annotations

import importlib

import torch
from torch import Tensor

from .limits import state_size_fits, triton_interpret

TRITON_INSTALL_HINT = "pip install triton (or install a CUDA build of torch, which brings Triton)"


def shape_error(name: str, t: Tensor, expected: str):
    """Raise the ValueError for input ``name`` whose shape is not ``expected`` (in words)."""
    raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {expected}")


def check_devices_and_floats(tensors: dict[str, Tensor | None]) -> None:
    """ValueError unless the given (non-None) tensors share one device and are floating point."""
    devices = {k: t.device for k, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        raise ValueError(f"inputs are on different devices: {devices}")
    for k, t in tensors.items():
        if t is not None and not t.is_floating_point():
            raise ValueError(f"{k} has dtype {t.dtype}, expected a floating-point tensor")


def pick_backend(
    backend: str, backends: tuple[str, ...], x: Tensor, op: str, module: str, state_size: int | None = None
) -> str:
    """The backend that runs ``op`` on ``x``: ``backend`` if it is one of ``backends`` (ValueError
    otherwise), with ``auto`` resolved to ``triton`` for CUDA tensors when ``module``'s Triton
    kernels import and ``state_size`` is within their range (limits.MAX_N), and to ``cpu``
    otherwise; a forced ``triton`` is checked to be able to run (:func:`check_triton_device`)."""
    if backend not in backends:
        raise ValueError(f"backend must be one of {backends}, got {backend!r}")
    if backend == "auto":
        fits = state_size is None or state_size_fits(state_size)
        return "triton" if x.is_cuda and fits and triton_available(module) else "cpu"
    if backend == "triton":
        check_triton_device(x, op)
    return backend


def check_triton_device(x: Tensor, op: str) -> None:
    """ValueError, in words, when ``backend='triton'`` is asked for on CPU tensors without the
    Triton interpreter (the kernels run on CUDA tensors; on the CPU only under TRITON_INTERPRET=1),
    and ImportError naming the install command when Triton is not installed."""
    if not triton_installed():
        raise ImportError(f"{op}: backend='triton' needs Triton, which is not installed: {TRITON_INSTALL_HINT}")
    if x.is_cuda or triton_interpret():
        return
    raise ValueError(
        f"{op}: backend='triton' got tensors on {x.device}, but the Triton kernels run on CUDA tensors "
        "(or on CPU tensors under the Triton interpreter, TRITON_INTERPRET=1 set before compressmamba is "
        "imported); use backend='cpu' (or 'auto') for CPU tensors, or move them to a GPU"
    )


def triton_installed() -> bool:
    """Whether ``triton`` imports (a CPU-only install may leave it out: it is an extra)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


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
