"""Triton selective-scan training kernels: forward, backward with in-chunk recomputation, the
launchers, the autograd Function, and the public op (in that order).

Each program owns one batch row and a block of channels × all N states (N masked to the next
power of two in registers, never padded in memory) and walks the sequence. The forward writes
y and the state at the start of every chunk of CHUNK steps; the backward walks the chunks in
reverse, recomputes the chunk's states from its start state into a per-program scratch buffer,
and runs the adjoint recurrence backwards. Memory: O(b·d·n·L/CHUNK) plus one chunk of scratch
per program. Gradients of B, C (shared by the channels of a group) and of A, D, delta_bias are
written as per-program partials and summed afterwards (deterministic, no atomics).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
MAX_N = 256


@triton.jit
def _softplus(x):
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))


@triton.jit(do_not_specialize=["L"])
def _fwd_kernel(
    u_ptr,
    dt_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    y_ptr,
    hck_ptr,
    L,
    d,
    n,
    chans_per_group,
    s_ub,
    s_ud,
    s_ul,
    s_bb,
    s_bg,
    s_bn,
    s_bl,
    s_cb,
    s_cg,
    s_cn,
    s_cl,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CHUNK: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    md = offs_d < d
    mn = offs_n < n
    mdn = md[:, None] & mn[None, :]
    grp = (pid_d * BLOCK_D) // chans_per_group
    A = tl.load(A_ptr + offs_d[:, None] * n + offs_n[None, :], mask=mdn, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    n_chunks = tl.cdiv(L, CHUNK)
    hck_base = hck_ptr + ((pid_b * d + offs_d[:, None]) * n + offs_n[None, :]) * (n_chunks + 1)
    for t in range(0, L):
        if t % CHUNK == 0:
            tl.store(hck_base + t // CHUNK, h, mask=mdn)
        uo = pid_b * s_ub + offs_d * s_ud + t * s_ul
        u = tl.load(u_ptr + uo, mask=md, other=0.0).to(tl.float32)
        dt = tl.load(dt_ptr + uo, mask=md, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt += bias
        if SOFTPLUS:
            dt = _softplus(dt)
        Bt = tl.load(B_ptr + pid_b * s_bb + grp * s_bg + offs_n * s_bn + t * s_bl, mask=mn, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + pid_b * s_cb + grp * s_cg + offs_n * s_cn + t * s_cl, mask=mn, other=0.0).to(tl.float32)
        h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
        y = tl.sum(h * Ct[None, :], axis=1)
        if HAS_D:
            y += Dv * u
        if HAS_Z:
            zz = tl.load(z_ptr + uo, mask=md, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(y_ptr + (pid_b * d + offs_d) * L + t, y, mask=md)
    tl.store(hck_base + n_chunks, h, mask=mdn)


@triton.jit(do_not_specialize=["L"])
def _bwd_kernel(
    u_ptr,
    dt_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    dy_ptr,
    dlast_ptr,
    hck_ptr,
    scratch_ptr,
    du_ptr,
    ddt_ptr,
    dz_ptr,
    dA_ptr,
    dB_ptr,
    dC_ptr,
    dD_ptr,
    dbias_ptr,
    L,
    d,
    n,
    chans_per_group,
    n_dblocks,
    s_ub,
    s_ud,
    s_ul,
    s_bb,
    s_bg,
    s_bn,
    s_bl,
    s_cb,
    s_cg,
    s_cn,
    s_cl,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_DLAST: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CHUNK: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    md = offs_d < d
    mn = offs_n < n
    mdn = md[:, None] & mn[None, :]
    grp = (pid_d * BLOCK_D) // chans_per_group
    A = tl.load(A_ptr + offs_d[:, None] * n + offs_n[None, :], mask=mdn, other=0.0).to(tl.float32)
    Dv = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    n_chunks = tl.cdiv(L, CHUNK)
    sn = (pid_b * d + offs_d[:, None]) * n + offs_n[None, :]
    hck_base = hck_ptr + sn * (n_chunks + 1)
    scr_base = scratch_ptr + sn * CHUNK
    G = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    if HAS_DLAST:
        G = tl.load(dlast_ptr + sn, mask=mdn, other=0.0).to(tl.float32)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for cc in range(0, n_chunks):
        c = n_chunks - 1 - cc
        t0 = c * CHUNK
        t1 = tl.minimum(t0 + CHUNK, L)
        # recompute the chunk's states h_t (t0 <= t < t1) from the state entering it
        h = tl.load(hck_base + c, mask=mdn, other=0.0)
        for t in range(t0, t1):
            uo = pid_b * s_ub + offs_d * s_ud + t * s_ul
            u = tl.load(u_ptr + uo, mask=md, other=0.0).to(tl.float32)
            dt = tl.load(dt_ptr + uo, mask=md, other=0.0).to(tl.float32) + bias
            if SOFTPLUS:
                dt = _softplus(dt)
            Bt = tl.load(B_ptr + pid_b * s_bb + grp * s_bg + offs_n * s_bn + t * s_bl, mask=mn, other=0.0).to(
                tl.float32
            )
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
            tl.store(scr_base + (t - t0), h, mask=mdn)
        # adjoint recurrence, backwards through the chunk
        for tt in range(t0, t1):
            t = t0 + t1 - 1 - tt
            uo = pid_b * s_ub + offs_d * s_ud + t * s_ul
            u = tl.load(u_ptr + uo, mask=md, other=0.0).to(tl.float32)
            raw = tl.load(dt_ptr + uo, mask=md, other=0.0).to(tl.float32) + bias
            dt = raw
            if SOFTPLUS:
                dt = _softplus(raw)
            Bt = tl.load(B_ptr + pid_b * s_bb + grp * s_bg + offs_n * s_bn + t * s_bl, mask=mn, other=0.0).to(
                tl.float32
            )
            Ct = tl.load(C_ptr + pid_b * s_cb + grp * s_cg + offs_n * s_cn + t * s_cl, mask=mn, other=0.0).to(
                tl.float32
            )
            h_t = tl.load(scr_base + (t - t0), mask=mdn, other=0.0)
            if t > t0:
                h_prev = tl.load(scr_base + (t - 1 - t0), mask=mdn, other=0.0)
            else:
                h_prev = tl.load(hck_base + c, mask=mdn, other=0.0)
            dy = tl.load(dy_ptr + (pid_b * d + offs_d) * L + t, mask=md, other=0.0).to(tl.float32)
            if HAS_Z:
                zz = tl.load(z_ptr + uo, mask=md, other=0.0).to(tl.float32)
                sig = tl.sigmoid(zz)
                y_pre = tl.sum(h_t * Ct[None, :], axis=1) + Dv * u
                dz = dy * y_pre * sig * (1.0 + zz * (1.0 - sig))
                tl.store(dz_ptr + (pid_b * d + offs_d) * L + t, dz, mask=md)
                dy = dy * zz * sig
            # y_t = <h_t, C_t> + D u_t
            dCt = tl.sum(dy[:, None] * h_t, axis=0)
            tl.store(dC_ptr + ((pid_b * n_dblocks + pid_d) * n + offs_n) * L + t, dCt, mask=mn)
            G += dy[:, None] * Ct[None, :]
            dD_acc += dy * u
            du = dy * Dv
            # h_t = a_t h_{t-1} + dt u B_t, a_t = exp(dt A)
            a = tl.exp(dt[:, None] * A)
            ga = G * h_prev * a  # d/d(dt·A)
            ddt = tl.sum(ga * A, axis=1) + u * tl.sum(G * Bt[None, :], axis=1)
            du += dt * tl.sum(G * Bt[None, :], axis=1)
            dBt = tl.sum(G * (dt * u)[:, None], axis=0)
            tl.store(dB_ptr + ((pid_b * n_dblocks + pid_d) * n + offs_n) * L + t, dBt, mask=mn)
            dA_acc += ga * dt[:, None]
            G = G * a
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(raw)
            dbias_acc += ddt
            tl.store(du_ptr + (pid_b * d + offs_d) * L + t, du, mask=md)
            tl.store(ddt_ptr + (pid_b * d + offs_d) * L + t, ddt, mask=md)
    tl.store(dA_ptr + sn, dA_acc, mask=mdn)
    tl.store(dD_ptr + pid_b * d + offs_d, dD_acc, mask=md)
    tl.store(dbias_ptr + pid_b * d + offs_d, dbias_acc, mask=md)


def _block_d(d: int, chans_per_group: int) -> int:
    """Largest power of two ≤ 32 dividing the channels of a group (a block never spans groups)."""
    bd = 1
    while bd < 32 and chans_per_group % (bd * 2) == 0:
        bd *= 2
    return bd


def _norm_bc(X):
    return X.unsqueeze(1) if X.dim() == 3 else X


def _launch_fwd(u, dt, A, B, C, D, z, bias, softplus, chunk):
    b, d, L = u.shape
    n = A.shape[1]
    if n > MAX_N:
        raise ValueError(f"d_state {n} exceeds the Triton kernel's maximum {MAX_N}; use backend='cpu'")
    Bn, Cn = _norm_bc(B), _norm_bc(C)
    cpg = d // Bn.shape[1]
    bd = _block_d(d, cpg)
    y = torch.empty(b, d, L, device=u.device, dtype=torch.float32)
    n_chunks = triton.cdiv(L, chunk)
    hck = torch.empty(b, d, n, n_chunks + 1, device=u.device, dtype=torch.float32)
    grid = (b, triton.cdiv(d, bd))
    _fwd_kernel[grid](
        u,
        dt,
        A,
        Bn,
        Cn,
        D if D is not None else u,
        z if z is not None else u,
        bias if bias is not None else u,
        y,
        hck,
        L,
        d,
        n,
        cpg,
        u.stride(0),
        u.stride(1),
        u.stride(2),
        *Bn.stride(),
        *Cn.stride(),
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=bias is not None,
        SOFTPLUS=softplus,
        BLOCK_D=bd,
        BLOCK_N=triton.next_power_of_2(n),
        CHUNK=chunk,
        num_warps=4 if not _INTERPRET else 1,
    )
    return y, hck


def _launch_bwd(u, dt, A, B, C, D, z, bias, softplus, chunk, hck, dy, dlast):
    b, d, L = u.shape
    n = A.shape[1]
    Bn, Cn = _norm_bc(B), _norm_bc(C)
    g = Bn.shape[1]
    cpg = d // g
    bd = _block_d(d, cpg)
    nb = triton.cdiv(d, bd)
    f32 = dict(device=u.device, dtype=torch.float32)
    du, ddt, dz = torch.empty(b, d, L, **f32), torch.empty(b, d, L, **f32), torch.empty(b, d, L, **f32)
    dA, dD, dbias = torch.empty(b, d, n, **f32), torch.empty(b, d, **f32), torch.empty(b, d, **f32)
    dB, dC = torch.empty(b, nb, n, L, **f32), torch.empty(b, nb, n, L, **f32)
    scratch = torch.empty(b, d, n, chunk, **f32)
    _bwd_kernel[(b, nb)](
        u,
        dt,
        A,
        Bn,
        Cn,
        D if D is not None else u,
        z if z is not None else u,
        bias if bias is not None else u,
        dy,
        dlast if dlast is not None else u,
        hck,
        scratch,
        du,
        ddt,
        dz,
        dA,
        dB,
        dC,
        dD,
        dbias,
        L,
        d,
        n,
        cpg,
        nb,
        u.stride(0),
        u.stride(1),
        u.stride(2),
        *Bn.stride(),
        *Cn.stride(),
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=bias is not None,
        SOFTPLUS=softplus,
        HAS_DLAST=dlast is not None,
        BLOCK_D=bd,
        BLOCK_N=triton.next_power_of_2(n),
        CHUNK=chunk,
        num_warps=4 if not _INTERPRET else 1,
    )
    # channel blocks of one group share B_t, C_t: sum their partials (fixed order: deterministic)
    dB = dB.view(b, g, nb // g, n, L).sum(2)
    dC = dC.view(b, g, nb // g, n, L).sum(2)
    if B.dim() == 3:
        dB, dC = dB[:, 0], dC[:, 0]
    return du, ddt, dA.sum(0), dB, dC, dD.sum(0), dz, dbias.sum(0)


class SelectiveScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk):
        u, delta, B, C = (t.contiguous() for t in (u, delta, B, C))
        z = z.contiguous() if z is not None else None
        A32 = A.float().contiguous()
        D32 = D.float().contiguous() if D is not None else None
        bias32 = delta_bias.float().contiguous() if delta_bias is not None else None
        y, hck = _launch_fwd(u, delta, A32, B, C, D32, z, bias32, delta_softplus, chunk)
        ctx.save_for_backward(u, delta, A32, B, C, D32, z, bias32, hck)
        ctx.cfg = (delta_softplus, chunk, A.dtype, D is not None, delta_bias is not None)
        last = hck[..., -1]
        ctx.mark_non_differentiable(hck)
        y = y.to(u.dtype)
        return (y, last) if return_last_state else (y, None)

    @staticmethod
    def backward(ctx, dy, dlast):
        u, delta, A32, B, C, D32, z, bias32, hck = ctx.saved_tensors
        softplus, chunk, a_dtype, has_d, has_bias = ctx.cfg
        du, ddt, dA, dB, dC, dD, dz, dbias = _launch_bwd(
            u,
            delta,
            A32,
            B,
            C,
            D32,
            z,
            bias32,
            softplus,
            chunk,
            hck,
            dy.contiguous().float(),
            dlast.contiguous().float() if dlast is not None else None,
        )
        return (
            du.to(u.dtype),
            ddt.to(delta.dtype),
            dA.to(a_dtype),
            dB.to(B.dtype),
            dC.to(C.dtype),
            dD if has_d else None,
            dz.to(z.dtype) if z is not None else None,
            dbias if has_bias else None,
            None,
            None,
            None,
        )


def selective_scan_triton(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False, chunk: int = 64
):
    """Triton selective scan (mamba-ssm's signature; ``chunk`` sets the recomputation length)."""
    y, last = SelectiveScanTriton.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk)
    return (y, last) if return_last_state else y


__all__ = ["selective_scan_triton", "F"]
