from .cpu import ssd_scan_cpu
from .dispatch import ssd_scan_fn, ssd_state_update
from .reference import ssd_scan_ref, ssd_state_update_ref

__all__ = ["ssd_scan_cpu", "ssd_scan_fn", "ssd_scan_ref", "ssd_state_update", "ssd_state_update_ref"]
