"""Limits shared by the Triton launchers and dispatchers, each written once: the largest state
size, 32-bit indexing, and whether Triton runs its interpreter."""

from __future__ import annotations

import os

INT32_MAX = 2**31 - 1
MAX_N = 256  # largest d_state of every Triton kernel: whole (block, N) fp32 tiles live in registers


def triton_interpret() -> bool:
    """Whether Triton runs its CPU interpreter (``TRITON_INTERPRET=1``; the one place the package
    reads it). Triton reads it when a kernel is defined: set it before compressmamba is imported."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def state_size_fits(n: int) -> bool:
    """Whether the Triton kernels run state size ``n`` (``backend='auto'`` falls back above it)."""
    return 1 <= n <= MAX_N


def check_state_size(n: int, what: str = "d_state") -> None:
    """ValueError naming ``n`` and the way out when a forced Triton kernel cannot run it."""
    if not state_size_fits(n):
        raise ValueError(f"{what} {n} exceeds the Triton kernels' range 1..{MAX_N}; use backend='cpu' (or 'auto')")


def check_int32_indexing(**numels: int) -> None:
    """The Triton kernels index with 32-bit offsets: refuse (never overflow silently) a buffer of
    2^31 elements or more, naming it and the way out."""
    for name, numel in numels.items():
        if numel > INT32_MAX:
            raise ValueError(
                f"{name} would hold {numel} elements, more than the Triton kernels' 32-bit indexing allows "
                f"({INT32_MAX}); split the batch, or use backend='cpu'"
            )
