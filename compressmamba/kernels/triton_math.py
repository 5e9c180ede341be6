"""Triton device functions the kernel families share; imported only by their Triton modules
(scan.py, step.py), never by code that must run without Triton."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def softplus(x):
    """log(1 + eˣ), and x itself above 20 (torch's softplus with threshold 20)."""
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))
