"""Limits shared by the Triton launchers."""

from __future__ import annotations

INT32_MAX = 2**31 - 1


def check_int32_indexing(**numels: int) -> None:
    """The Triton kernels index with 32-bit offsets: refuse (never overflow silently) a buffer of
    2^31 elements or more, naming it and the way out."""
    for name, numel in numels.items():
        if numel > INT32_MAX:
            raise ValueError(
                f"{name} would hold {numel} elements, more than the Triton kernels' 32-bit indexing allows "
                f"({INT32_MAX}); split the batch, or use backend='cpu'"
            )
