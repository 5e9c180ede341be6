"""Triton one-token decode step: state (b, d, n) updated in place, any N ≤ MAX_N (masked to the
next power of two in registers). One program per (batch row, block of channels)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..limits import check_state_size, triton_interpret
from ..triton_math import softplus as _softplus
from .scan import block_d, channel_params, fixed_warps, tile

_INTERPRET = triton_interpret()


@triton.jit
def _step_kernel(
    s_ptr,
    x_ptr,
    dt_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    y_ptr,
    d,
    n,
    chans_per_group,
    s_sb,
    s_sd,
    s_sn,
    s_xb,
    s_bb,
    s_bg,
    s_cb,
    s_cg,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_b, pid_d, offs_d, offs_n, md, mn, mdn, grp, dn = tile(d, n, chans_per_group, BLOCK_D, BLOCK_N)
    A, Dv, bias = channel_params(A_ptr, D_ptr, bias_ptr, dn, mdn, offs_d, md, HAS_D, HAS_BIAS)
    sp = s_ptr + pid_b * s_sb + offs_d[:, None] * s_sd + offs_n[None, :] * s_sn
    h = tl.load(sp, mask=mdn, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + pid_b * s_xb + offs_d, mask=md, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + pid_b * s_xb + offs_d, mask=md, other=0.0).to(tl.float32) + bias
    if SOFTPLUS:
        dt = _softplus(dt)
    Bt = tl.load(B_ptr + pid_b * s_bb + grp * s_bg + offs_n, mask=mn, other=0.0).to(tl.float32)
    Ct = tl.load(C_ptr + pid_b * s_cb + grp * s_cg + offs_n, mask=mn, other=0.0).to(tl.float32)
    h = tl.exp2(dt[:, None] * (A * 1.4426950408889634)) * h + (dt * x)[:, None] * Bt[None, :]
    tl.store(sp, h.to(s_ptr.dtype.element_ty), mask=mdn)
    y = tl.sum(h * Ct[None, :], axis=1) + Dv * x
    if HAS_Z:
        zz = tl.load(z_ptr + pid_b * s_xb + offs_d, mask=md, other=0.0).to(tl.float32)
        y = y * zz * tl.sigmoid(zz)
    tl.store(y_ptr + pid_b * d + offs_d, y, mask=md)


def selective_state_update_triton(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One decode step in Triton (mamba-ssm's ``selective_state_update`` for Mamba-1).

    Shapes: state (b, d, n), updated in place (any strides, any float dtype; computed in fp32);
    x, dt, z (b, d); A (d, n) with 1 <= n <= MAX_N; B, C (b, n) or grouped (b, g, n) with g
    dividing d; D, dt_bias (d,). Returns y (b, d) in x's dtype.
    """
    b, d, n = state.shape
    check_state_size(n)
    x, dt = x.contiguous(), dt.contiguous()
    z = z.contiguous() if z is not None else None
    Bn = (B.unsqueeze(1) if B.dim() == 2 else B).contiguous()
    Cn = (C.unsqueeze(1) if C.dim() == 2 else C).contiguous()
    cpg = d // Bn.shape[1]
    bd = block_d(n, cpg)
    y = torch.empty(b, d, device=x.device, dtype=torch.float32)
    A32 = A.float().contiguous()
    _step_kernel[(b, triton.cdiv(d, bd))](
        state,
        x,
        dt,
        A32,
        Bn,
        Cn,
        D.float().contiguous() if D is not None else x,
        z if z is not None else x,
        dt_bias.float().contiguous() if dt_bias is not None else x,
        y,
        d,
        n,
        cpg,
        *state.stride(),
        x.stride(0),
        Bn.stride(0),
        Bn.stride(1),
        Cn.stride(0),
        Cn.stride(1),
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=dt_bias is not None,
        SOFTPLUS=dt_softplus,
        BLOCK_D=bd,
        BLOCK_N=triton.next_power_of_2(n),
        num_warps=1 if _INTERPRET else fixed_warps(bd, n),
    )
    return y.to(x.dtype)
