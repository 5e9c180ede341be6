"""Selective-scan and causal-conv kernels (installed as ``compressmamba.kernels``).

Until the fast paths land, the public ops dispatch to the PyTorch reference.
"""

from .selective_scan import selective_scan_ref, selective_state_update_ref

selective_scan_fn = selective_scan_ref
selective_state_update = selective_state_update_ref

__all__ = [
    "selective_scan_fn",
    "selective_state_update",
    "selective_scan_ref",
    "selective_state_update_ref",
]
