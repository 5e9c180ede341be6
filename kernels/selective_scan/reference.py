"""Readable PyTorch specification of the selective scan (Mamba-1), float64-capable.

Shapes follow mamba-ssm: u, delta, z (b, d, l); A (d, n); B, C (b, n, l) or grouped (b, g, n, l)
with d divisible by g (channel c uses group c // (d // g)); D, delta_bias (d,).

    Δ = softplus(delta + delta_bias)            (if delta_softplus; threshold 20)
    h_t[d, n] = exp(Δ_t[d] A[d, n]) h_{t-1}[d, n] + Δ_t[d] B_t[n] u_t[d]
    y_t[d]    = Σ_n C_t[n] h_t[d, n] + D[d] u_t[d],    then y *= SiLU(z)

A time loop is fine here: this is the specification the fast paths are tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _expand_groups(X: Tensor, d: int) -> Tensor:
    """(b, n, l) -> (b, 1, n, l); (b, g, n, l) -> (b, d, n, l) by repeating each group."""
    if X.dim() == 3:
        return X.unsqueeze(1)
    g = X.shape[1]
    return X.repeat_interleave(d // g, dim=1)


def scan_prologue(u, delta, A, B, C, delta_bias, delta_softplus):
    """Shared by the PyTorch scans: the compute dtype (float64 if ``u`` is, else float32), the
    inputs cast to it, and Δ = softplus(delta + delta_bias) as configured."""
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(ct) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta = F.softplus(delta, threshold=20.0)
    return ct, u, delta, A, B, C


def scan_epilogue(y, u, D, z, ct, dtype_in):
    """Shared by the PyTorch scans: y + D·u, gated by SiLU(z), in the input dtype."""
    if D is not None:
        y = y + u * D.to(ct)[:, None]
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(dtype_in)


def selective_scan_ref(
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
    """Reference selective scan. Computes in float32, or float64 when ``u`` is float64.

    Returns ``y`` (b, d, l) in ``u``'s dtype, and ``last_state`` (b, d, n) in the compute dtype
    when ``return_last_state``.
    """
    dtype_in = u.dtype
    ct, u, delta, A, B, C = scan_prologue(u, delta, A, B, C, delta_bias, delta_softplus)
    b, d, l = u.shape
    B = _expand_groups(B, d)
    C = _expand_groups(C, d)
    dA = torch.exp(delta.unsqueeze(-1) * A[None, :, None, :])  # (b, d, l, n)
    dBu = (delta * u).unsqueeze(-1) * B.transpose(-1, -2)  # (b, d, l, n)
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(l):
        h = dA[:, :, t] * h + dBu[:, :, t]
        ys.append((h * C[:, :, :, t]).sum(-1))
    y = scan_epilogue(torch.stack(ys, dim=-1), u, D, z, ct, dtype_in)
    return (y, h) if return_last_state else y


def selective_state_update_ref(
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
) -> Tensor:
    """One decode step. state (b, d, n) is updated in place; x, dt, z (b, d); B, C (b, n) or
    (b, g, n). Returns y (b, d) in ``x``'s dtype."""
    ct = torch.float64 if state.dtype == torch.float64 else torch.float32
    d = x.shape[1]
    if dt_bias is not None:
        dt = dt + dt_bias
    dt = dt.to(ct)
    if dt_softplus:
        dt = F.softplus(dt, threshold=20.0)
    Bx = B.to(ct).unsqueeze(1) if B.dim() == 2 else B.to(ct).repeat_interleave(d // B.shape[1], 1)
    Cx = C.to(ct).unsqueeze(1) if C.dim() == 2 else C.to(ct).repeat_interleave(d // C.shape[1], 1)
    dA = torch.exp(dt.unsqueeze(-1) * A.to(ct))
    new = state.to(ct) * dA + (dt * x.to(ct)).unsqueeze(-1) * Bx
    state.copy_(new)
    y = (new * Cx).sum(-1)
    if D is not None:
        y = y + x.to(ct) * D.to(ct)
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(x.dtype)
