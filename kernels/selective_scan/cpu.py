"""The vectorised PyTorch selective scan that CPU users run.

The recurrence h_t = a_t ⊙ h_{t−1} + x_t (a_t = exp(Δ_t A), x_t = Δ_t B_t u_t) is solved by a
blocked scan (chunks of about sqrt(L) steps, all chunks at once, then a carry across chunks):
about 2·sqrt(L) vectorised steps over (b, d, n, ·), no per-token Python loop. Decays only
multiply (a ≤ 1), so nothing overflows; strong decay underflows to the correct 0. The backward
of a linear recurrence is again one (reverse) linear recurrence, so :class:`LinearScan` stores
only a and h and runs the same scan backwards.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _scan_forward(a: Tensor, x: Tensor) -> Tensor:
    """h_t = a_t h_{t−1} + x_t along the last dim (h_{−1} = 0). Returns h (same shape).

    Blocked scan: the sequence is cut into chunks of T ≈ sqrt(L); (1) all chunks are scanned at
    once, T vectorised steps over (…, chunks); (2) the chunk-end states are carried across the
    L/T chunks; (3) each chunk adds its carried-in state times the within-chunk decay product.
    About 2·sqrt(L) Python iterations and a handful of full passes over the data, with only
    products of decays a ≤ 1 (no division, nothing overflows; strong decay underflows to 0).
    """
    L = a.shape[-1]
    T = max(1, math.isqrt(L - 1) + 1) if L > 1 else 1
    n_chunks = -(-L // T)
    pad = n_chunks * T - L
    if pad:
        a = F.pad(a, (0, pad), value=1.0)
        x = F.pad(x, (0, pad), value=0.0)
    a = a.reshape(*a.shape[:-1], n_chunks, T)
    h = x.reshape(*x.shape[:-1], n_chunks, T).clone()
    for j in range(1, T):  # (1) within-chunk scans, all chunks together
        h[..., j] += a[..., j] * h[..., j - 1]
    if n_chunks > 1:
        decay = torch.cumprod(a, dim=-1)  # within-chunk products of decays
        carry = torch.empty_like(h[..., 0])  # state entering each chunk
        carry[..., 0] = 0
        for c in range(1, n_chunks):  # (2) carry chunk-end states across chunks
            carry[..., c] = decay[..., c - 1, -1] * carry[..., c - 1] + h[..., c - 1, -1]
        h += decay * carry[..., None]  # (3)
    h = h.reshape(*h.shape[:-2], n_chunks * T)
    return h[..., :L] if pad else h


def _scan_reverse(a_next: Tensor, g: Tensor) -> Tensor:
    """G_t = g_t + a_{t+1} G_{t+1} (the adjoint recurrence), with a_next[t] = a[t+1]."""
    return _scan_forward(a_next.flip(-1), g.flip(-1)).flip(-1)


class LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, x: Tensor) -> Tensor:
        h = _scan_forward(a, x)
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, grad_h: Tensor):
        a, h = ctx.saved_tensors
        a_next = torch.cat([a[..., 1:], torch.zeros_like(a[..., :1])], dim=-1)
        G = _scan_reverse(a_next, grad_h)  # dLoss/dx_t
        h_prev = torch.cat([torch.zeros_like(h[..., :1]), h[..., :-1]], dim=-1)
        return G * h_prev, G


def linear_scan(a: Tensor, x: Tensor) -> Tensor:
    """h_t = a_t ⊙ h_{t−1} + x_t along the last dim, differentiable in a and x."""
    return LinearScan.apply(a, x)


def selective_scan_cpu(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """Selective scan with the reference's signature and math (fp32 accumulation; fp64 stays
    fp64). Memory: a few (b, d, n, l) tensors."""
    dtype_in = u.dtype
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(ct) for t in (u, delta, A, B, C))
    d = u.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta = F.softplus(delta, threshold=20.0)
    if B.dim() == 4:
        B = B.repeat_interleave(d // B.shape[1], dim=1)  # (b, d, n, l)
    else:
        B = B.unsqueeze(1)  # (b, 1, n, l)
    if C.dim() == 4:
        C = C.repeat_interleave(d // C.shape[1], dim=1)
    else:
        C = C.unsqueeze(1)
    a = torch.exp(delta.unsqueeze(2) * A[None, :, :, None])  # (b, d, n, l)
    x = (delta * u).unsqueeze(2) * B  # (b, d, n, l)
    h = linear_scan(a, x)
    y = (h * C).sum(2)
    if D is not None:
        y = y + u * D.to(ct)[:, None]
    if z is not None:
        y = y * F.silu(z.to(ct))
    y = y.to(dtype_in)
    return (y, h[..., -1]) if return_last_state else y
