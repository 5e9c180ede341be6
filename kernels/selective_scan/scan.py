"""Triton selective-scan training kernels: forward, backward with in-chunk recomputation, the
launchers, the autograd Function, and the public op (in that order).

Each program owns one batch row and a block of BLOCK_D channels × all N states (N masked to the
next power of two in registers, never padded in memory) and walks the sequence. The forward
writes y and the state entering every chunk of CHUNK steps; the backward walks the chunks in
reverse, recomputes the chunk's states from its entering state into a per-program scratch
buffer, and runs the adjoint recurrence backwards. Memory: O(b·d·n·L/CHUNK) for the chunk states
plus b·d·n·CHUNK of scratch. Gradients of B, C (shared by the channels of a group) are written as
one partial per channel block and summed afterwards in a fixed order (deterministic, no atomics);
so are those of A, D and delta_bias (shared by the batch).

Per (channel, state) and step the forward costs one exp2 and two FMAs (A is pre-scaled by
log2(e)); everything per channel (loads, softplus, D, z) is paid once for all N states.

Layouts: chunk states hck (b, n_chunks + 1, d, n) and scratch (b, CHUNK, d, n), so a program's
(BLOCK_D, N) tile is contiguous when BLOCK_D channels are whole rows.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
MAX_N = 256  # largest d_state: the (BLOCK_D, N) fp32 tiles must fit in registers


def _configs():
    """A small list to tune per (n, d): warps × software-pipelining stages of the time loop's
    loads. The interpreter fails on autotune with several configs, so it gets one."""
    if _INTERPRET:
        return [triton.Config({}, num_warps=1, num_stages=1)]
    return [triton.Config({}, num_warps=w, num_stages=s) for w in (2, 4, 8) for s in (1, 3)]


def _prune(configs, named_args, **kwargs):
    """Drop configs with more threads than tile elements (idle lanes); keep at least one."""
    tile = kwargs.get("BLOCK_D", 32) * kwargs.get("BLOCK_N", 16)
    kept = [c for c in configs if c.num_warps * 32 <= tile]
    return kept or [min(configs, key=lambda c: (c.num_warps, c.num_stages))]


_TUNE = dict(configs=_configs(), key=["n", "d"], prune_configs_by={"early_config_prune": _prune})


@triton.jit
def _softplus(x):
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))


@triton.autotune(**_TUNE)
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
    A2 = tl.load(A_ptr + offs_d[:, None] * n + offs_n[None, :], mask=mdn, other=0.0).to(tl.float32) * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    n_chunks = tl.cdiv(L, CHUNK)
    dn = offs_d[:, None] * n + offs_n[None, :]
    hck_base = hck_ptr + pid_b * (n_chunks + 1) * d * n + dn
    u_base = pid_b * s_ub + offs_d * s_ud
    b_base = B_ptr + pid_b * s_bb + grp * s_bg + offs_n * s_bn
    c_base = C_ptr + pid_b * s_cb + grp * s_cg + offs_n * s_cn
    y_base = y_ptr + (pid_b * d + offs_d) * L
    for t in range(0, L):
        if t % CHUNK == 0:
            tl.store(hck_base + (t // CHUNK) * d * n, h, mask=mdn)
        uo = u_base + t * s_ul
        u = tl.load(u_ptr + uo, mask=md, other=0.0).to(tl.float32)
        dt = tl.load(dt_ptr + uo, mask=md, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt += bias
        if SOFTPLUS:
            dt = _softplus(dt)
        Bt = tl.load(b_base + t * s_bl, mask=mn, other=0.0).to(tl.float32)
        Ct = tl.load(c_base + t * s_cl, mask=mn, other=0.0).to(tl.float32)
        h = tl.exp2(dt[:, None] * A2) * h + (dt * u)[:, None] * Bt[None, :]
        y = tl.sum(h * Ct[None, :], axis=1)
        if HAS_D:
            y += Dv * u
        if HAS_Z:
            zz = tl.load(z_ptr + uo, mask=md, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(y_base + t, y, mask=md)
    tl.store(hck_base + n_chunks * d * n, h, mask=mdn)


@triton.autotune(**_TUNE)
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
    A2 = A * 1.4426950408889634
    Dv = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    n_chunks = tl.cdiv(L, CHUNK)
    dn = offs_d[:, None] * n + offs_n[None, :]
    hck_base = hck_ptr + pid_b * (n_chunks + 1) * d * n + dn
    scr_base = scratch_ptr + pid_b * CHUNK * d * n + dn
    u_base = pid_b * s_ub + offs_d * s_ud
    b_base = B_ptr + pid_b * s_bb + grp * s_bg + offs_n * s_bn
    c_base = C_ptr + pid_b * s_cb + grp * s_cg + offs_n * s_cn
    row = (pid_b * d + offs_d) * L  # rows of y, du, ddt, dz (contiguous (b, d, L))
    part = ((pid_b * n_dblocks + pid_d) * n + offs_n) * L  # this block's dB, dC partial rows
    G = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # adjoint of h_t
    if HAS_DLAST:
        G = tl.load(dlast_ptr + pid_b * d * n + dn, mask=mdn, other=0.0).to(tl.float32)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for cc in range(0, n_chunks):
        c = n_chunks - 1 - cc
        t0 = c * CHUNK
        t1 = tl.minimum(t0 + CHUNK, L)
        # recompute the chunk's states h_t (t0 <= t < t1) from the state entering it
        h = tl.load(hck_base + c * d * n, mask=mdn, other=0.0)
        for t in range(t0, t1):
            uo = u_base + t * s_ul
            u = tl.load(u_ptr + uo, mask=md, other=0.0).to(tl.float32)
            dt = tl.load(dt_ptr + uo, mask=md, other=0.0).to(tl.float32) + bias
            if SOFTPLUS:
                dt = _softplus(dt)
            Bt = tl.load(b_base + t * s_bl, mask=mn, other=0.0).to(tl.float32)
            h = tl.exp2(dt[:, None] * A2) * h + (dt * u)[:, None] * Bt[None, :]
            tl.store(scr_base + (t - t0) * d * n, h, mask=mdn)
        # adjoint recurrence backwards through the chunk; h_t is carried, h_{t-1} loaded
        h_t = h
        for tt in range(t0, t1):
            t = t0 + t1 - 1 - tt
            uo = u_base + t * s_ul
            u = tl.load(u_ptr + uo, mask=md, other=0.0).to(tl.float32)
            raw = tl.load(dt_ptr + uo, mask=md, other=0.0).to(tl.float32) + bias
            dt = raw
            if SOFTPLUS:
                dt = _softplus(raw)
            Bt = tl.load(b_base + t * s_bl, mask=mn, other=0.0).to(tl.float32)
            Ct = tl.load(c_base + t * s_cl, mask=mn, other=0.0).to(tl.float32)
            if t > t0:
                h_prev = tl.load(scr_base + (t - 1 - t0) * d * n, mask=mdn, other=0.0)
            else:
                h_prev = tl.load(hck_base + c * d * n, mask=mdn, other=0.0)
            dy = tl.load(dy_ptr + row + t, mask=md, other=0.0).to(tl.float32)
            if HAS_Z:
                zz = tl.load(z_ptr + uo, mask=md, other=0.0).to(tl.float32)
                sig = tl.sigmoid(zz)
                y_pre = tl.sum(h_t * Ct[None, :], axis=1) + Dv * u
                tl.store(dz_ptr + row + t, dy * y_pre * sig * (1.0 + zz * (1.0 - sig)), mask=md)
                dy = dy * zz * sig
            # y_t = <h_t, C_t> + D u_t
            tl.store(dC_ptr + part + t, tl.sum(dy[:, None] * h_t, axis=0), mask=mn)
            G += dy[:, None] * Ct[None, :]
            dD_acc += dy * u
            # h_t = a_t h_{t-1} + dt u B_t with a_t = exp(dt A)
            a = tl.exp2(dt[:, None] * A2)
            ga = G * h_prev * a  # adjoint of (dt·A)
            gb = tl.sum(G * Bt[None, :], axis=1)
            ddt = tl.sum(ga * A, axis=1) + u * gb
            tl.store(dB_ptr + part + t, tl.sum(G * (dt * u)[:, None], axis=0), mask=mn)
            dA_acc += ga * dt[:, None]
            G = G * a
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(raw)
            dbias_acc += ddt
            tl.store(du_ptr + row + t, dy * Dv + dt * gb, mask=md)
            tl.store(ddt_ptr + row + t, ddt, mask=md)
            h_t = h_prev
    tl.store(dA_ptr + pid_b * d * n + dn, dA_acc, mask=mdn)
    tl.store(dD_ptr + pid_b * d + offs_d, dD_acc, mask=md)
    tl.store(dbias_ptr + pid_b * d + offs_d, dbias_acc, mask=md)


def block_d(n: int, chans_per_group: int) -> int:
    """Channels per program: a power of two dividing a group's channels (a block never spans
    groups), at most 32, and at most 2048 // N so the (BLOCK_D, N) tiles stay in registers."""
    cap = max(1, min(32, 2048 // triton.next_power_of_2(n)))
    bd = 1
    while bd < cap and chans_per_group % (bd * 2) == 0:
        bd *= 2
    return bd


def _norm_bc(X):
    return X.unsqueeze(1) if X.dim() == 3 else X


def _flags(D, z, bias, softplus, n, bd, chunk):
    return dict(
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=bias is not None,
        SOFTPLUS=bool(softplus),
        BLOCK_D=bd,
        BLOCK_N=triton.next_power_of_2(n),
        CHUNK=chunk,
    )


def _launch_fwd(u, dt, A, B, C, D, z, bias, softplus, chunk):
    """y (b, d, L) fp32 and the chunk-entry states hck (b, n_chunks + 1, d, n) fp32; the last
    entry is the final state."""
    b, d, L = u.shape
    n = A.shape[1]
    Bn, Cn = _norm_bc(B), _norm_bc(C)
    cpg = d // Bn.shape[1]
    bd = block_d(n, cpg)
    y = torch.empty(b, d, L, device=u.device, dtype=torch.float32)
    hck = torch.empty(b, triton.cdiv(L, chunk) + 1, d, n, device=u.device, dtype=torch.float32)
    opt = lambda t: t if t is not None else u  # noqa: E731 — placeholder pointer, never read
    _fwd_kernel[(b, triton.cdiv(d, bd))](
        u,
        dt,
        A,
        Bn,
        Cn,
        opt(D),
        opt(z),
        opt(bias),
        y,
        hck,
        L,
        d,
        n,
        cpg,
        *u.stride(),
        *Bn.stride(),
        *Cn.stride(),
        **_flags(D, z, bias, softplus, n, bd, chunk),
    )
    return y, hck


def _launch_bwd(u, dt, A, B, C, D, z, bias, softplus, chunk, hck, dy, dlast):
    """Gradients (du, ddelta, dz) (b, d, L), dA (d, n), dB, dC like B, C, dD, ddelta_bias (d,),
    all fp32."""
    b, d, L = u.shape
    n = A.shape[1]
    Bn, Cn = _norm_bc(B), _norm_bc(C)
    g = Bn.shape[1]
    cpg = d // g
    bd = block_d(n, cpg)
    nb = triton.cdiv(d, bd)
    f32 = dict(device=u.device, dtype=torch.float32)
    du, ddt, dz = (torch.empty(b, d, L, **f32) for _ in range(3))
    dA, dD, dbias = torch.empty(b, d, n, **f32), torch.empty(b, d, **f32), torch.empty(b, d, **f32)
    dB, dC = torch.empty(b, nb, n, L, **f32), torch.empty(b, nb, n, L, **f32)
    scratch = torch.empty(b, chunk, d, n, **f32)
    opt = lambda t: t if t is not None else u  # noqa: E731 — placeholder pointer, never read
    _bwd_kernel[(b, nb)](
        u,
        dt,
        A,
        Bn,
        Cn,
        opt(D),
        opt(z),
        opt(bias),
        dy,
        opt(dlast),
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
        *u.stride(),
        *Bn.stride(),
        *Cn.stride(),
        HAS_DLAST=dlast is not None,
        **_flags(D, z, bias, softplus, n, bd, chunk),
    )
    # the channel blocks of one group share B_t, C_t: sum their partials (fixed order: deterministic)
    dB = dB.view(b, g, nb // g, n, L).sum(2)
    dC = dC.view(b, g, nb // g, n, L).sum(2)
    if B.dim() == 3:
        dB, dC = dB[:, 0], dC[:, 0]
    return du, ddt, dz, dA.sum(0), dB, dC, dD.sum(0), dbias.sum(0)


class SelectiveScanTriton(torch.autograd.Function):
    """Autograd wrapper: saves the inputs and the chunk-entry states, not every state."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk):
        u, delta, B, C = (t.contiguous() for t in (u, delta, B, C))
        z = z.contiguous() if z is not None else None
        A32 = A.float().contiguous()
        D32 = D.float().contiguous() if D is not None else None
        bias32 = delta_bias.float().contiguous() if delta_bias is not None else None
        y, hck = _launch_fwd(u, delta, A32, B, C, D32, z, bias32, delta_softplus, chunk)
        ctx.save_for_backward(u, delta, A32, B, C, D32, z, bias32, hck)
        ctx.cfg = (delta_softplus, chunk, A.dtype)
        ctx.mark_non_differentiable(hck)
        last = hck[:, -1] if return_last_state else None
        return y.to(u.dtype), last

    @staticmethod
    def backward(ctx, dy, dlast):
        u, delta, A32, B, C, D32, z, bias32, hck = ctx.saved_tensors
        softplus, chunk, a_dtype = ctx.cfg
        dlast = dlast.float().contiguous() if dlast is not None else None
        du, ddt, dz, dA, dB, dC, dD, dbias = _launch_bwd(
            u, delta, A32, B, C, D32, z, bias32, softplus, chunk, hck, dy.float().contiguous(), dlast
        )
        return (
            du.to(u.dtype),
            ddt.to(delta.dtype),
            dA.to(a_dtype),
            dB.to(B.dtype),
            dC.to(C.dtype),
            dD if D32 is not None else None,
            dz.to(z.dtype) if z is not None else None,
            dbias if bias32 is not None else None,
            None,
            None,
            None,
        )


def selective_scan_triton(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    chunk: int = 64,
):
    """Selective scan in Triton, mamba-ssm's signature; forward and backward.

    Shapes: u, delta, z (b, d, L); A (d, n) with 1 <= n <= MAX_N; B, C (b, n, L) or grouped
    (b, g, n, L) with g dividing d; D, delta_bias (d,) (used in fp32). u, delta, z, B, C may be
    fp32, fp16 or bf16; accumulation is fp32. ``chunk`` is the number of steps between stored
    states (the backward recomputes the states inside a chunk).

    Returns y (b, d, L) in u's dtype, and with ``return_last_state`` also the final state
    (b, d, n) in fp32. Shapes are checked by ``compressmamba.kernels.selective_scan_fn``; this
    function checks only what the kernel itself cannot do.
    """
    n = A.shape[-1]
    if not 1 <= n <= MAX_N:
        raise ValueError(f"d_state {n} exceeds the Triton kernel's range 1..{MAX_N}; use backend='cpu'")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    y, last = SelectiveScanTriton.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk)
    return (y, last) if return_last_state else y


__all__ = ["MAX_N", "selective_scan_triton"]
