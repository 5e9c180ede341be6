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
    """h_t = a_t h_{t−1} + x_t along dim 1 of (b, l, ...) tensors (h_{−1} = 0).

    Blocked scan: the sequence is cut into chunks of T ≈ sqrt(L); (1) all chunks are scanned at
    once, T vectorised steps over (b, chunks, ...); (2) the chunk-end states are carried across the
    L/T chunks; (3) each chunk adds its carried-in state times the within-chunk decay product.
    About 2·sqrt(L) Python iterations and a handful of passes over the data, with only products
    of decays a ≤ 1 (no division: nothing overflows; strong decay underflows to 0). Time is dim 1
    so that every step touches contiguous (d, n) blocks.
    """
    b, L = a.shape[:2]
    rest = a.shape[2:]
    T = math.isqrt(L - 1) + 1 if L > 1 else 1
    n_chunks = -(-L // T)
    pad = n_chunks * T - L
    if pad:
        a = torch.cat([a, a.new_ones(b, pad, *rest)], dim=1)
        x = torch.cat([x, x.new_zeros(b, pad, *rest)], dim=1)
    a = a.reshape(b, n_chunks, T, *rest)
    h = x.reshape(b, n_chunks, T, *rest).clone()
    for j in range(1, T):  # (1) within-chunk scans, all chunks together
        h[:, :, j] += a[:, :, j] * h[:, :, j - 1]
    if n_chunks > 1:
        decay = torch.cumprod(a, dim=2)  # within-chunk products of decays
        carry = torch.zeros_like(h[:, :, 0])  # state entering each chunk
        for c in range(1, n_chunks):  # (2) carry chunk-end states across chunks
            carry[:, c] = decay[:, c - 1, -1] * carry[:, c - 1] + h[:, c - 1, -1]
        h += decay * carry[:, :, None]  # (3)
    h = h.reshape(b, n_chunks * T, *rest)
    return h[:, :L] if pad else h


def _scan_reverse(a: Tensor, g: Tensor) -> Tensor:
    """The adjoint recurrence G_t = g_t + a_{t+1} G_{t+1} along dim 1."""
    a_next = torch.empty_like(a)
    a_next[:, :-1] = a[:, 1:]
    a_next[:, -1] = 0
    return _scan_forward(a_next.flip(1), g.flip(1)).flip(1)


class LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, x: Tensor) -> Tensor:
        h = _scan_forward(a, x)
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, grad_h: Tensor):
        a, h = ctx.saved_tensors
        G = _scan_reverse(a, grad_h)  # dLoss/dx_t
        grad_a = torch.zeros_like(G)
        grad_a[:, 1:] = G[:, 1:] * h[:, :-1]
        return grad_a, G


def linear_scan(a: Tensor, x: Tensor) -> Tensor:
    """h_t = a_t ⊙ h_{t−1} + x_t along dim 1 of (b, l, ...) tensors, differentiable in a and x."""
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
    fp64). Works in (b, l, d, n) layout; memory: a few (b, l, d, n) tensors."""
    dtype_in = u.dtype
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(ct) for t in (u, delta, A, B, C))
    d = u.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta = F.softplus(delta, threshold=20.0)
    dt = delta.transpose(1, 2)  # (b, l, d)
    if B.dim() == 4:  # grouped: (b, g, n, l) → (b, l, d, n)
        Bt = B.repeat_interleave(d // B.shape[1], dim=1).permute(0, 3, 1, 2)
        Ct = C.repeat_interleave(d // C.shape[1], dim=1).permute(0, 3, 1, 2)
    else:  # shared: (b, n, l) → (b, l, 1, n)
        Bt, Ct = B.transpose(1, 2).unsqueeze(2), C.transpose(1, 2).unsqueeze(2)
    a = torch.exp(dt.unsqueeze(-1) * A)  # (b, l, d, n)
    x = (dt * u.transpose(1, 2)).unsqueeze(-1) * Bt  # (b, l, d, n)
    h = linear_scan(a, x)
    if B.dim() == 4:
        y = (h * Ct).sum(-1)
    else:
        y = (h @ Ct.transpose(-1, -2)).squeeze(-1)  # (b, l, d, n) @ (b, l, n, 1)
    y = y.transpose(1, 2)
    if D is not None:
        y = y + u * D.to(ct)[:, None]
    if z is not None:
        y = y * F.silu(z.to(ct))
    y = y.to(dtype_in)
    return (y, h[:, -1]) if return_last_state else y
