"""Triton one-token SSD (Mamba-2) decode step: state (b, h, p, n) updated in place, any
n <= MAX_N and p <= MAX_P (masked to powers of two in registers). One program per (batch row,
head) holds the head's whole (p, n) state."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..limits import check_state_size, triton_interpret
from ..triton_math import softplus as _softplus
from .scan import MAX_P

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
    H,
    P,
    N,
    heads_per_group,
    s_sb,
    s_sh,
    s_sp,
    s_sn,
    s_xb,
    s_xh,
    s_xp,
    s_zb,
    s_zh,
    s_zp,
    s_tb,
    s_th,
    s_bb,
    s_bg,
    s_bn,
    s_cb,
    s_cg,
    s_cn,
    HAS_D: tl.constexpr,
    D_PER_CHANNEL: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    grp = pid_h // heads_per_group
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mp, mn = offs_p < P, offs_n < N
    m = mp[:, None] & mn[None, :]
    sp = s_ptr + pid_b * s_sb + pid_h * s_sh + offs_p[:, None] * s_sp + offs_n[None, :] * s_sn
    state = tl.load(sp, mask=m, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + pid_b * s_xb + pid_h * s_xh + offs_p * s_xp, mask=mp, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + pid_b * s_tb + pid_h * s_th).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + pid_h).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    A = tl.load(A_ptr + pid_h).to(tl.float32)
    Bt = tl.load(B_ptr + pid_b * s_bb + grp * s_bg + offs_n * s_bn, mask=mn, other=0.0).to(tl.float32)
    Ct = tl.load(C_ptr + pid_b * s_cb + grp * s_cg + offs_n * s_cn, mask=mn, other=0.0).to(tl.float32)
    state = tl.exp(dt * A) * state + (dt * x)[:, None] * Bt[None, :]
    tl.store(sp, state.to(s_ptr.dtype.element_ty), mask=m)
    y = tl.sum(state * Ct[None, :], axis=1)
    if HAS_D:
        if D_PER_CHANNEL:
            y += tl.load(D_ptr + pid_h * P + offs_p, mask=mp, other=0.0).to(tl.float32) * x
        else:
            y += tl.load(D_ptr + pid_h).to(tl.float32) * x
    if HAS_Z:
        zz = tl.load(z_ptr + pid_b * s_zb + pid_h * s_zh + offs_p * s_zp, mask=mp, other=0.0).to(tl.float32)
        y = y * zz * tl.sigmoid(zz)
    tl.store(y_ptr + (pid_b * H + pid_h) * P + offs_p, y, mask=mp)


def ssd_state_update_triton(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One SSD decode step in Triton; the signature of ``ssd_state_update_ref``.

    Shapes: state (b, h, p, n), updated in place (any strides, any float dtype; computed in
    fp32); x, z (b, h, p); dt (b, h); A, dt_bias (h,); B, C (b, g, n) with g dividing h; D (h,)
    or (h, p). Returns y (b, h, p) in x's dtype.
    """
    b, H, P, N = state.shape
    check_state_size(N)
    if not 1 <= P <= MAX_P:
        raise ValueError(f"headdim {P} exceeds the Triton kernels' range 1..{MAX_P}; use backend='cpu'")
    g = B.shape[1]
    y = torch.empty(b, H, P, device=x.device, dtype=torch.float32)
    zz = z if z is not None else x  # placeholder pointer, never read
    Dc = D.contiguous() if D is not None else x
    # fmt: off
    _step_kernel[(b, H)](
        state, x, dt, A.contiguous(), B, C, Dc, zz, dt_bias.contiguous() if dt_bias is not None else x, y,
        H, P, N, H // g, *state.stride(), *x.stride(), *zz.stride(), *dt.stride(), *B.stride(), *C.stride(),
        HAS_D=D is not None, D_PER_CHANNEL=D is not None and D.dim() == 2, HAS_Z=z is not None,
        HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        BLOCK_P=triton.next_power_of_2(P), BLOCK_N=triton.next_power_of_2(N), num_warps=1 if _INTERPRET else 4,
    )
    # fmt: on
    return y.to(x.dtype)
