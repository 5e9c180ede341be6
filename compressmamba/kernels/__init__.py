"""Selective-scan (Mamba-1), SSD (Mamba-2) and causal-conv kernels (installed as
``compressmamba.kernels``).

Public ops dispatch by device: CPU tensors run the vectorised PyTorch scan, CUDA tensors the
Triton kernels when present; ``backend=`` forces one. Each fast path has a same-signature
PyTorch reference (``*_ref``) that the tests compare against in float64.
"""

from .conv1d import causal_conv1d_fn, causal_conv1d_ref, causal_conv1d_update
from .selective_scan import (
    selective_scan_cpu,
    selective_scan_fn,
    selective_scan_ref,
    selective_state_update,
    selective_state_update_ref,
)
from .ssd import ssd_scan_cpu, ssd_scan_fn, ssd_scan_ref, ssd_state_update, ssd_state_update_ref

__all__ = [
    "causal_conv1d_fn",
    "causal_conv1d_ref",
    "causal_conv1d_update",
    "selective_scan_cpu",
    "selective_scan_fn",
    "selective_scan_ref",
    "selective_state_update",
    "selective_state_update_ref",
    "ssd_scan_cpu",
    "ssd_scan_fn",
    "ssd_scan_ref",
    "ssd_state_update",
    "ssd_state_update_ref",
]
