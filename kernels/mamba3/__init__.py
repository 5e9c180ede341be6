from .cpu import mamba3_scan_cpu
from .dispatch import mamba3_scan_fn, mamba3_step
from .reference import mamba3_scan_ref, mamba3_step_ref

__all__ = ["mamba3_scan_cpu", "mamba3_scan_fn", "mamba3_scan_ref", "mamba3_step", "mamba3_step_ref"]
