"""Readable PyTorch specification of Mamba-2's state-space dual (SSD) scan, float64-capable.

Shapes follow mamba-ssm's ``mamba_chunk_scan_combined`` (time before heads): x, z (b, l, h, p);
dt (b, l, h); A, dt_bias (h,); B, C (b, l, g, n) with g dividing h (head i reads group
i // (h // g)); D (h,) or (h, p); states (b, h, p, n). Symbols: h heads of p channels each
(headdim), n states, g groups of B and C, A a negative scalar per head.

    Δ = softplus(dt + dt_bias)                     (if dt_softplus; threshold 20 as mamba-ssm)
    h_t[i] = exp(Δ_t[i] A[i]) h_{t-1}[i] + Δ_t[i] x_t[i] ⊗ B_t[g(i)]      (p, n) per head i
    y_t[i] = h_t[i] C_t[g(i)] + D[i] x_t[i],    then y *= SiLU(z)

A time loop is fine here: this is the specification the fast paths are tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 if ``x`` is, else float32 (bf16/fp16 inputs accumulate in fp32)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def process_dt(dt: Tensor, dt_bias: Tensor | None, dt_softplus: bool, ct: torch.dtype) -> Tensor:
    """Δ = softplus(dt + dt_bias) as configured, in ``ct``. dt (..., h); dt_bias (h,)."""
    dt = dt.to(ct)
    if dt_bias is not None:
        dt = dt + dt_bias.to(ct)
    return F.softplus(dt, threshold=20.0) if dt_softplus else dt


def expand_groups(X: Tensor, h: int) -> Tensor:
    """B or C (..., g, n) -> (..., h, n): head i reads group i // (h // g)."""
    return X.repeat_interleave(h // X.shape[-2], dim=-2)


def skip_and_gate(y: Tensor, x: Tensor, D: Tensor | None, z: Tensor | None, ct: torch.dtype) -> Tensor:
    """y + D x, then gated by SiLU(z); all (..., h, p) in ``ct``. D (h,) or (h, p)."""
    if D is not None:
        Dc = D.to(ct)
        y = y + x.to(ct) * (Dc[:, None] if Dc.dim() == 1 else Dc)
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y


def ssd_scan_ref(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int | None = None,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    initial_states: Tensor | None = None,
    dt_softplus: bool = False,
    return_final_states: bool = False,
):
    """Reference SSD scan, one step at a time. Computes in float32, or float64 when ``x`` is.

    ``chunk_size`` is accepted for the shared signature and ignored (the result does not depend
    on it). Returns y (b, l, h, p) in x's dtype, and with ``return_final_states`` also the final
    state (b, h, p, n) in the compute dtype.
    """
    ct = compute_dtype(x)
    b, l, h, p = x.shape
    delta = process_dt(dt, dt_bias, dt_softplus, ct)  # (b, l, h)
    decay = torch.exp(delta * A.to(ct))  # (b, l, h)
    Bh, Ch = expand_groups(B.to(ct), h), expand_groups(C.to(ct), h)  # (b, l, h, n)
    xc = x.to(ct)
    state = x.new_zeros(b, h, p, B.shape[-1], dtype=ct) if initial_states is None else initial_states.to(ct)
    ys = []
    for t in range(l):
        inflow = (delta[:, t, :, None] * xc[:, t])[..., None] * Bh[:, t, :, None, :]  # (b, h, p, n)
        state = decay[:, t, :, None, None] * state + inflow
        ys.append((state * Ch[:, t, :, None, :]).sum(-1))  # (b, h, p)
    y = skip_and_gate(torch.stack(ys, dim=1), xc, D, z, ct).to(x.dtype)
    return (y, state) if return_final_states else y


def ssd_state_update_ref(
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
    """One decode step of the SSD recurrence; also the torch path of ``ssd_state_update``.

    state (b, h, p, n) is updated in place (kept in its own dtype, computed in fp32 or float64);
    x, z (b, h, p); dt (b, h); A, dt_bias (h,); B, C (b, g, n); D (h,) or (h, p).
    Returns y (b, h, p) in x's dtype.
    """
    ct = torch.float64 if state.dtype == torch.float64 else torch.float32
    h = x.shape[1]
    delta = process_dt(dt, dt_bias, dt_softplus, ct)  # (b, h)
    Bh, Ch = expand_groups(B.to(ct), h), expand_groups(C.to(ct), h)  # (b, h, n)
    xc = x.to(ct)
    new = torch.exp(delta * A.to(ct))[..., None, None] * state.to(ct)
    new = new + (delta[..., None] * xc)[..., None] * Bh[:, :, None, :]
    state.copy_(new)
    y = (new * Ch[:, :, None, :]).sum(-1)
    return skip_and_gate(y, xc, D, z, ct).to(x.dtype)
