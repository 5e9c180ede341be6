from .cpu import mamba3_scan_cpu
from .reference import mamba3_scan_ref, mamba3_step_ref

__all__ = ["mamba3_scan_cpu", "mamba3_scan_ref", "mamba3_step_ref"]
