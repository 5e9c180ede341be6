from .cpu import linear_scan, selective_scan_cpu
from .dispatch import selective_scan_fn, selective_state_update
from .reference import selective_scan_ref, selective_state_update_ref

__all__ = [
    "linear_scan",
    "selective_scan_cpu",
    "selective_scan_fn",
    "selective_scan_ref",
    "selective_state_update",
    "selective_state_update_ref",
]
