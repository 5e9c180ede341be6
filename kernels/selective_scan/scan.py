"""Triton selective-scan training kernels: forward, backward with in-chunk recomputation, the
launchers, the autograd Function, and the public op (in that order).

Each program owns one batch row and a block of BLOCK_D channels × all N states (N masked to the
next power of two in registers, never padded in memory) and walks the sequence, loading step
t+1's inputs while it computes step t. The forward writes y, the final state and, when a
backward can follow, the state entering every chunk of CHUNK steps; the backward walks the
chunks in reverse, recomputes the chunk's states from its entering state into a per-program
scratch buffer, and runs the adjoint recurrence backwards. Memory: b·d·n·L/CHUNK for the chunk
states plus b·d·n·CHUNK of scratch, never b·d·n·L.

The backward collects each step's per-channel outputs (du, ddelta, dz) and per-state ones (dB, dC)
in register buffers of SUB steps and writes them every SUB steps, coalesced along L: one layout
conversion per SUB steps instead of several per step (``eval/kernel_report.py`` counts the
barriers). Gradients of B, C (shared by the channels of a group) are accumulated with fp32
atomics into (b, groups, n, L), as mamba-ssm does; under ``torch.use_deterministic_algorithms(True)`` they are
written as one partial per channel block and summed in a fixed order instead. Those of A, D and
delta_bias (shared by the batch) are per-batch-row partials summed afterwards.

BLOCK_D and the warp count are autotuned per (padded N, dim): layers whose N rounds up to the same
power of two share one tuning. Per (channel, state) and step the forward costs one exp2 and two
FMAs (A is pre-scaled by log2(e)); everything per channel (loads, softplus, D, z) is paid once for
all N states. ``python -m compressmamba.eval.kernel_report`` shows registers and spills per tile.

Layouts: chunk states hck (b, n_chunks, d, BLOCK_N) and scratch (b, CHUNK, d, BLOCK_N), rows
padded to the power of two BLOCK_N so a program's (BLOCK_D, BLOCK_N) tile is contiguous and
aligned whatever n is; inputs and outputs are never padded.
"""

from __future__ import annotations

import inspect
import os

import torch
import triton
import triton.language as tl

from ..limits import MAX_N, check_int32_indexing, check_state_size, triton_interpret
from ..triton_math import softplus as _softplus

_INTERPRET = triton_interpret()
# COMPRESSMAMBA_AUTOTUNE=0: launch the fixed block and warps (those the compile report checks)
# instead of autotuning, so a first call compiles one config per kernel, not a dozen
AUTOTUNE = os.environ.get("COMPRESSMAMBA_AUTOTUNE", "1") != "0"
CHUNK = 64  # steps between the states the forward stores for the backward (bench_scan --chunks times others)
# BLOCK_D * BLOCK_N at most: beyond it the backward spills (python -m compressmamba.eval.kernel_report)
MAX_TILE = 1024


def max_tile(bn: int) -> int:
    """The largest (BLOCK_D, BLOCK_N) tile at padded state size ``bn``: MAX_TILE, halved at
    N = 256, where Triton 3.6 (the GPU machines' version) spills the backward at 4 x 256 with 8
    warps (20 B per thread) and not at 2 x 256."""
    return MAX_TILE if bn < 256 else MAX_TILE // 2


def _configs():
    """Channel-block sizes × warps, pruned per call by ``_prune``. One warp is in: it repeats the
    per-channel work on fewest lanes (16 instructions per element-step at N=16 against 38 with 4
    warps, eval/kernel_report.py) but puts fewest warps in flight, which only timing can weigh.
    (Triton does not software-pipeline these loops, so num_stages does not matter; the kernels
    prefetch the next step by hand.) Under the interpreter the launchers pass BLOCK_D instead."""
    return [
        triton.Config({"BLOCK_D": bd}, num_warps=w, num_stages=1) for bd in (1, 2, 4, 8, 16, 32) for w in (1, 2, 4, 8)
    ]


def _prune(configs, named_args, **kwargs):
    """Keep blocks that divide a group's channels (a block never spans two groups), fit the
    register budget, and give each thread 2-16 tile elements; at least one config survives."""
    cpg, bn = named_args["chans_per_group"], kwargs["BLOCK_N"]
    fits = [c for c in configs if cpg % c.kwargs["BLOCK_D"] == 0 and c.kwargs["BLOCK_D"] * bn <= max_tile(bn)]
    kept = [c for c in fits if 2 <= c.kwargs["BLOCK_D"] * bn / (32 * c.num_warps) <= 16]
    if kept:
        return kept
    biggest = max(c.kwargs["BLOCK_D"] for c in fits)  # tiny tiles (N=1, few channels): one block, fewest warps
    return [min((c for c in fits if c.kwargs["BLOCK_D"] == biggest), key=lambda c: c.num_warps)]


def _autotune(**kw):
    """triton.autotune keyed on the padded state size and the width (so layers whose N round up
    to the same power of two share one tuning), with on-disk caching where Triton has it."""
    if "cache_results" in inspect.signature(triton.autotune).parameters:
        kw["cache_results"] = True
    return triton.autotune(
        configs=_configs(), key=["BLOCK_N", "d"], prune_configs_by={"early_config_prune": _prune}, **kw
    )


@triton.jit
def tile(d, n, chans_per_group, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's batch row, channel block, channel and state offsets, their masks, its
    B/C group, and the (channel, state) offsets into a (d, n) array."""
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    md = offs_d < d
    mn = offs_n < n
    grp = (pid_d * BLOCK_D) // chans_per_group
    return pid_b, pid_d, offs_d, offs_n, md, mn, md[:, None] & mn[None, :], grp, offs_d[:, None] * n + offs_n[None, :]


@triton.jit
def channel_params(A_ptr, D_ptr, bias_ptr, dn, mdn, offs_d, md, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr):
    """A (BLOCK_D, BLOCK_N), D and delta_bias (BLOCK_D,) in fp32; zeros where absent."""
    A = tl.load(A_ptr + dn, mask=mdn, other=0.0).to(tl.float32)
    Dv = tl.zeros_like(offs_d).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    bias = tl.zeros_like(offs_d).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    return A, Dv, bias


@triton.jit
def _input_ptrs(
    u_ptr,
    dt_ptr,
    z_ptr,
    B_ptr,
    C_ptr,
    pid_b,
    grp,
    offs_d,
    offs_n,
    s_ub,
    s_ud,
    s_tb,
    s_td,
    s_zb,
    s_zd,
    s_bb,
    s_bg,
    s_bn,
    s_cb,
    s_cg,
    s_cn,
):
    """Pointers to step 0 of this program's rows of u, delta, z (channels) and B, C (states)."""
    u_p = u_ptr + pid_b * s_ub + offs_d * s_ud
    dt_p = dt_ptr + pid_b * s_tb + offs_d * s_td
    z_p = z_ptr + pid_b * s_zb + offs_d * s_zd
    b_ptrs = B_ptr + pid_b * s_bb + grp * s_bg + offs_n * s_bn
    c_ptrs = C_ptr + pid_b * s_cb + grp * s_cg + offs_n * s_cn
    return u_p, dt_p, z_p, b_ptrs, c_ptrs


@triton.jit
def _load_step(u_p, dt_p, z_p, b_ptrs, c_ptrs, t, lo, L, s_ul, s_tl, s_zl, s_bl, s_cl, md, mn, HAS_Z: tl.constexpr):
    """Step t's inputs (u, raw delta, B_t, C_t, z) in fp32; zeros outside lo <= t < L. u_p, dt_p,
    z_p point at step 0 of this program's channels; u, delta and z may have different strides."""
    ok = (t >= lo) & (t < L)
    # tl.where, not md & ok: the interpreter turns a tensor & scalar of bools into int32 data
    mdt, mnt = tl.where(ok, md, False), tl.where(ok, mn, False)
    u = tl.load(u_p + t * s_ul, mask=mdt, other=0.0).to(tl.float32)
    raw = tl.load(dt_p + t * s_tl, mask=mdt, other=0.0).to(tl.float32)
    Bt = tl.load(b_ptrs + t * s_bl, mask=mnt, other=0.0).to(tl.float32)
    Ct = tl.load(c_ptrs + t * s_cl, mask=mnt, other=0.0).to(tl.float32)
    zz = u
    if HAS_Z:
        zz = tl.load(z_p + t * s_zl, mask=mdt, other=0.0).to(tl.float32)
    return u, raw, Bt, Ct, zz


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
    last_ptr,
    L,
    d,
    n,
    chans_per_group,
    s_ub,
    s_ud,
    s_ul,
    s_tb,
    s_td,
    s_tl,
    s_zb,
    s_zd,
    s_zl,
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
    STORE_CHUNKS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CHUNK: tl.constexpr,
):
    pid_b, pid_d, offs_d, offs_n, md, mn, mdn, grp, dn = tile(d, n, chans_per_group, BLOCK_D, BLOCK_N)
    A, Dv, bias = channel_params(A_ptr, D_ptr, bias_ptr, dn, mdn, offs_d, md, HAS_D, HAS_BIAS)
    A2 = A * 1.4426950408889634  # exp(dt A) = exp2(dt A2)
    # fmt: off
    u_p, dt_p, z_p, b_ptrs, c_ptrs = _input_ptrs(
        u_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, pid_b, grp, offs_d, offs_n,
        s_ub, s_ud, s_tb, s_td, s_zb, s_zd, s_bb, s_bg, s_bn, s_cb, s_cg, s_cn,
    )
    # fmt: on
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    # chunk states and scratch rows are padded to BLOCK_N (a compile-time stride: aligned,
    # vectorisable tiles whatever n is); the inputs and outputs are never padded
    dnp = offs_d[:, None] * BLOCK_N + offs_n[None, :]
    hck_base = hck_ptr + pid_b * tl.cdiv(L, CHUNK) * d * BLOCK_N + dnp
    y_base = y_ptr + (pid_b * d + offs_d) * L
    u, raw, Bt, Ct, zz = _load_step(
        u_p, dt_p, z_p, b_ptrs, c_ptrs, 0, 0, L, s_ul, s_tl, s_zl, s_bl, s_cl, md, mn, HAS_Z
    )
    for t in range(0, L):
        if STORE_CHUNKS:
            if t % CHUNK == 0:
                tl.store(hck_base + (t // CHUNK) * d * BLOCK_N, h, mask=mdn)
        # issue step t+1's loads now so their latency overlaps this step's arithmetic
        nxt = _load_step(u_p, dt_p, z_p, b_ptrs, c_ptrs, t + 1, 0, L, s_ul, s_tl, s_zl, s_bl, s_cl, md, mn, HAS_Z)
        dt = raw + bias
        if SOFTPLUS:
            dt = _softplus(dt)
        h = tl.exp2(dt[:, None] * A2) * h + (dt * u)[:, None] * Bt[None, :]
        y = tl.sum(h * Ct[None, :], axis=1)
        if HAS_D:
            y += Dv * u
        if HAS_Z:
            y = y * zz * tl.sigmoid(zz)
        tl.store(y_base + t, y, mask=md)
        u, raw, Bt, Ct, zz = nxt
    tl.store(last_ptr + pid_b * d * n + dn, h, mask=mdn)


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
    n_groups,
    s_ub,
    s_ud,
    s_ul,
    s_tb,
    s_td,
    s_tl,
    s_zb,
    s_zd,
    s_zl,
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
    ATOMIC_BC: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CHUNK: tl.constexpr,
    SUB: tl.constexpr = 16,
):
    pid_b, pid_d, offs_d, offs_n, md, mn, mdn, grp, dn = tile(d, n, chans_per_group, BLOCK_D, BLOCK_N)
    A, Dv, bias = channel_params(A_ptr, D_ptr, bias_ptr, dn, mdn, offs_d, md, HAS_D, HAS_BIAS)
    A2 = A * 1.4426950408889634
    # fmt: off
    u_p, dt_p, z_p, b_ptrs, c_ptrs = _input_ptrs(
        u_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, pid_b, grp, offs_d, offs_n,
        s_ub, s_ud, s_tb, s_td, s_zb, s_zd, s_bb, s_bg, s_bn, s_cb, s_cg, s_cn,
    )
    # fmt: on
    n_chunks = tl.cdiv(L, CHUNK)
    dnp = offs_d[:, None] * BLOCK_N + offs_n[None, :]  # padded rows (see the forward)
    hck_base = hck_ptr + pid_b * n_chunks * d * BLOCK_N + dnp
    scr_base = scratch_ptr + pid_b * CHUNK * d * BLOCK_N + dnp
    row = (pid_b * d + offs_d) * L  # rows of dy, du, ddt, dz (contiguous (b, d, L))
    if ATOMIC_BC:  # dB, dC (b, n_groups, n, L), accumulated by every channel block of the group
        bc = ((pid_b * n_groups + grp) * n + offs_n) * L
    else:  # one partial row per channel block, summed by the launcher (deterministic)
        bc = ((pid_b * tl.cdiv(d, BLOCK_D) + pid_d) * n + offs_n) * L
    G = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # adjoint of h_t
    if HAS_DLAST:
        G = tl.load(dlast_ptr + pid_b * d * n + dn, mask=mdn, other=0.0).to(tl.float32)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    sub_cols = tl.arange(0, SUB)[None, :]
    sub_rows = tl.arange(0, SUB)[:, None]
    b_du = tl.zeros((BLOCK_D, SUB), dtype=tl.float32)
    b_ddt = tl.zeros((BLOCK_D, SUB), dtype=tl.float32)
    b_dz = tl.zeros((BLOCK_D, SUB), dtype=tl.float32)
    b_dB = tl.zeros((SUB, BLOCK_N), dtype=tl.float32)
    b_dC = tl.zeros((SUB, BLOCK_N), dtype=tl.float32)
    for cc in range(0, n_chunks):
        c = n_chunks - 1 - cc
        t0 = c * CHUNK
        t1 = tl.minimum(t0 + CHUNK, L)
        # recompute the chunk's states h_t (t0 <= t < t1) from the state entering it. The scratch
        # is written and read back by the same thread as long as the store and the loads share a
        # layout; the barriers make that a guarantee (one pair per chunk: negligible)
        tl.debug_barrier()
        h = tl.load(hck_base + c * d * BLOCK_N, mask=mdn, other=0.0)
        u, raw, Bt, Ct, zz = _load_step(
            u_p, dt_p, z_p, b_ptrs, c_ptrs, t0, t0, t1, s_ul, s_tl, s_zl, s_bl, s_cl, md, mn, False
        )
        for t in range(t0, t1):
            nxt = _load_step(u_p, dt_p, z_p, b_ptrs, c_ptrs, t + 1, t0, t1, s_ul, s_tl, s_zl, s_bl, s_cl, md, mn, False)
            dt = raw + bias
            if SOFTPLUS:
                dt = _softplus(dt)
            h = tl.exp2(dt[:, None] * A2) * h + (dt * u)[:, None] * Bt[None, :]
            tl.store(scr_base + (t - t0) * d * BLOCK_N, h, mask=mdn)
            u, raw, Bt, Ct, zz = nxt
        tl.debug_barrier()
        # adjoint recurrence backwards through the chunk: h_t is carried, h_{t-1} loaded, and
        # step t-1's inputs are fetched while step t computes
        h_t = h
        t = t1 - 1
        u, raw, Bt, Ct, zz = _load_step(
            u_p, dt_p, z_p, b_ptrs, c_ptrs, t, t0, t1, s_ul, s_tl, s_zl, s_bl, s_cl, md, mn, HAS_Z
        )
        dy = tl.load(dy_ptr + row + t, mask=md, other=0.0).to(tl.float32)
        if t > t0:
            h_prev = tl.load(scr_base + (t - 1 - t0) * d * BLOCK_N, mask=mdn, other=0.0)
        else:
            h_prev = tl.load(hck_base + c * d * BLOCK_N, mask=mdn, other=0.0)
        for tt in range(t0, t1):
            t = t0 + t1 - 1 - tt
            nxt = _load_step(u_p, dt_p, z_p, b_ptrs, c_ptrs, t - 1, t0, t1, s_ul, s_tl, s_zl, s_bl, s_cl, md, mn, HAS_Z)
            n_dy = tl.load(dy_ptr + row + t - 1, mask=tl.where(t - 1 >= t0, md, False), other=0.0).to(tl.float32)
            if t - 1 > t0:
                n_h_prev = tl.load(scr_base + (t - 2 - t0) * d * BLOCK_N, mask=mdn, other=0.0)
            else:
                n_h_prev = tl.load(hck_base + c * d * BLOCK_N, mask=mdn, other=0.0)
            dt = raw + bias
            if SOFTPLUS:
                dt = _softplus(dt)
            if HAS_Z:
                sig = tl.sigmoid(zz)
                y_pre = tl.sum(h_t * Ct[None, :], axis=1) + Dv * u
                dz = dy * y_pre * sig * (1.0 + zz * (1.0 - sig))
                dy = dy * zz * sig
            # y_t = <h_t, C_t> + D u_t
            G += dy[:, None] * Ct[None, :]
            dD_acc += dy * u
            # h_t = a_t h_{t-1} + dt u B_t with a_t = exp(dt A)
            a = tl.exp2(dt[:, None] * A2)
            ga = G * h_prev * a  # adjoint of (dt·A)
            gb = tl.sum(G * Bt[None, :], axis=1)
            ddt = tl.sum(ga * A, axis=1) + u * gb
            dA_acc += ga * dt[:, None]
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(raw + bias)
            # this step's outputs go into column j of register buffers, written every SUB steps
            # (coalesced along L, one layout conversion per SUB steps instead of several per step)
            j = (t - t0) % SUB
            at_j = sub_cols == j
            b_du = tl.where(at_j, (dy * Dv + dt * gb)[:, None], b_du)
            b_ddt = tl.where(at_j, ddt[:, None], b_ddt)
            if HAS_Z:
                b_dz = tl.where(at_j, dz[:, None], b_dz)
            at_j = sub_rows == j
            b_dC = tl.where(at_j, tl.sum(dy[:, None] * h_t, axis=0)[None, :], b_dC)
            b_dB = tl.where(at_j, tl.sum(G * (dt * u)[:, None], axis=0)[None, :], b_dB)
            G = G * a
            if j == 0:  # the buffers hold steps t .. t + SUB - 1 (those below t1)
                ts = t + sub_cols
                m_out = md[:, None] & (ts < t1)
                tl.store(du_ptr + row[:, None] + ts, b_du, mask=m_out)
                tl.store(ddt_ptr + row[:, None] + ts, b_ddt, mask=m_out)
                if HAS_Z:
                    tl.store(dz_ptr + row[:, None] + ts, b_dz, mask=m_out)
                dbias_acc += tl.sum(tl.where(m_out, b_ddt, 0.0), axis=1)
                tsr = t + sub_rows
                m_bc = (tsr < t1) & mn[None, :]
                if ATOMIC_BC:
                    tl.atomic_add(dC_ptr + bc[None, :] + tsr, b_dC, mask=m_bc)
                    tl.atomic_add(dB_ptr + bc[None, :] + tsr, b_dB, mask=m_bc)
                else:
                    tl.store(dC_ptr + bc[None, :] + tsr, b_dC, mask=m_bc)
                    tl.store(dB_ptr + bc[None, :] + tsr, b_dB, mask=m_bc)
            h_t = h_prev
            u, raw, Bt, Ct, zz = nxt
            dy = n_dy
            h_prev = n_h_prev
    tl.store(dA_ptr + pid_b * d * n + dn, dA_acc, mask=mdn)
    tl.store(dD_ptr + pid_b * d + offs_d, dD_acc, mask=md)
    tl.store(dbias_ptr + pid_b * d + offs_d, dbias_acc, mask=md)


_fwd_tuned = _autotune()(_fwd_kernel)
_bwd_tuned = _autotune(reset_to_zero=["dB_ptr", "dC_ptr"])(_bwd_kernel)


def block_d(n: int, chans_per_group: int) -> int:
    """Channels per program where the launcher picks (the interpreter, the deterministic
    backward, the decode step): a power of two dividing a group's channels (a block never spans
    groups), at most 32, and at most max_tile // N so the (BLOCK_D, N) tiles stay in registers."""
    bn = triton.next_power_of_2(n)
    cap = max(1, min(32, max_tile(bn) // bn))
    bd = 1
    while bd < cap and chans_per_group % (bd * 2) == 0:
        bd *= 2
    return bd


def fixed_warps(bd: int, n: int) -> int:
    """Warps where the launcher picks the block: one per 32 tile elements, 2 to 8 (the backward
    compiles without spills at these on sm_90 with Triton 3.6 and 3.9; one per 64 spilled 32 B
    at 32 x 8 with Triton 3.6; tests/kernels/test_compile.py checks)."""
    return min(8, max(2, bd * triton.next_power_of_2(n) // 32))


def _norm_bc(X):
    return X.unsqueeze(1) if X.dim() == 3 else X


def _launch(tuned, plain, grid_of, args, flags, n, cpg, fixed_block=False):
    """Run ``tuned`` (the autotuner picks BLOCK_D and warps) on a GPU, or ``plain`` with the
    launcher's block where the block is fixed (the interpreter, deterministic partials,
    COMPRESSMAMBA_AUTOTUNE=0).
    Returns the BLOCK_D used."""
    if _INTERPRET or fixed_block or not AUTOTUNE:
        bd = block_d(n, cpg)
        plain[grid_of(bd)](*args, BLOCK_D=bd, num_warps=1 if _INTERPRET else fixed_warps(bd, n), **flags)
        return bd
    tuned[lambda meta: grid_of(meta["BLOCK_D"])](*args, **flags)
    return tuned.best_config.kwargs["BLOCK_D"]


def _flags(D, z, bias, softplus, n, chunk):
    return dict(
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=bias is not None,
        SOFTPLUS=bool(softplus),
        BLOCK_N=triton.next_power_of_2(n),
        CHUNK=chunk,
    )


def _launch_fwd(u, dt, A, B, C, D, z, bias, softplus, chunk, store_chunks):
    """y (b, d, L) fp32, the final state (b, d, n) fp32, and with ``store_chunks`` the states
    entering each chunk, hck (b, n_chunks, d, n) fp32, that the backward starts from."""
    b, d, L = u.shape
    n = A.shape[1]
    Bn, Cn = _norm_bc(B), _norm_bc(C)
    cpg = d // Bn.shape[1]
    y = torch.empty(b, d, L, device=u.device, dtype=torch.float32)
    last = torch.empty(b, d, n, device=u.device, dtype=torch.float32)
    n_ck = triton.cdiv(L, chunk) if store_chunks else 0
    hck = torch.empty(b, n_ck, d, triton.next_power_of_2(n), device=u.device, dtype=torch.float32)
    opt = lambda t: t if t is not None else u  # noqa: E731 — placeholder pointer, never read
    args = (u, dt, A, Bn, Cn, opt(D), opt(z), opt(bias), y, hck if store_chunks else last, last, L, d, n, cpg)
    args += (*u.stride(), *dt.stride(), *(z if z is not None else u).stride(), *Bn.stride(), *Cn.stride())
    flags = dict(_flags(D, z, bias, softplus, n, chunk), STORE_CHUNKS=store_chunks)
    _launch(_fwd_tuned, _fwd_kernel, lambda bd: (b, triton.cdiv(d, bd)), args, flags, n, cpg)
    return y, last, hck


def _launch_bwd(u, dt, A, B, C, D, z, bias, softplus, chunk, hck, dy, dlast):
    """Gradients (du, ddelta, dz) (b, d, L), dA (d, n), dB, dC like B, C, dD, ddelta_bias (d,),
    all fp32. dB and dC are accumulated with atomics across a group's channel blocks, or, when
    ``torch.use_deterministic_algorithms(True)`` is on, written as one partial per channel block
    and summed in a fixed order."""
    b, d, L = u.shape
    n = A.shape[1]
    Bn, Cn = _norm_bc(B), _norm_bc(C)
    g = Bn.shape[1]
    cpg = d // g
    deterministic = torch.are_deterministic_algorithms_enabled()
    f32 = dict(device=u.device, dtype=torch.float32)
    du, ddt, dz = (torch.empty(b, d, L, **f32) for _ in range(3))
    dA, dD, dbias = torch.empty(b, d, n, **f32), torch.empty(b, d, **f32), torch.empty(b, d, **f32)
    if deterministic:
        nb = triton.cdiv(d, block_d(n, cpg))
        check_int32_indexing(dB_partials=b * nb * n * L)
        dB, dC = torch.empty(b, nb, n, L, **f32), torch.empty(b, nb, n, L, **f32)
    else:
        dB, dC = torch.zeros(b, g, n, L, **f32), torch.zeros(b, g, n, L, **f32)
    scratch = torch.empty(b, chunk, d, triton.next_power_of_2(n), **f32)
    opt = lambda t: t if t is not None else u  # noqa: E731 — placeholder pointer, never read
    args = (u, dt, A, Bn, Cn, opt(D), opt(z), opt(bias), dy, opt(dlast), hck, scratch, du, ddt, dz, dA, dB, dC, dD)
    zs = (z if z is not None else u).stride()
    args += (dbias, L, d, n, cpg, g, *u.stride(), *dt.stride(), *zs, *Bn.stride(), *Cn.stride())
    flags = dict(_flags(D, z, bias, softplus, n, chunk), HAS_DLAST=dlast is not None, ATOMIC_BC=not deterministic)
    grid_of = lambda bd: (b, triton.cdiv(d, bd))  # noqa: E731
    _launch(_bwd_tuned, _bwd_kernel, grid_of, args, flags, n, cpg, fixed_block=deterministic)
    if deterministic:  # the channel blocks of one group share B_t, C_t: sum their partials in order
        dB = dB.view(b, g, nb // g, n, L).sum(2)
        dC = dC.view(b, g, nb // g, n, L).sum(2)
    if B.dim() == 3:
        dB, dC = dB[:, 0], dC[:, 0]
    return du, ddt, dz, dA.sum(0), dB, dC, dD.sum(0), dbias.sum(0)


class SelectiveScanTriton(torch.autograd.Function):
    """Autograd wrapper: saves the inputs and the chunk-entry states, not every state."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk, store_chunks):
        # u, delta and z are read through their own strides (Mamba's delta and z are transposed
        # views: copying them would move as many bytes as the scan itself); B, C are small
        B, C = B.contiguous(), C.contiguous()
        A32 = A.float().contiguous()
        D32 = D.float().contiguous() if D is not None else None
        bias32 = delta_bias.float().contiguous() if delta_bias is not None else None
        y, last, hck = _launch_fwd(u, delta, A32, B, C, D32, z, bias32, delta_softplus, chunk, store_chunks)
        ctx.save_for_backward(u, delta, A32, B, C, D32, z, bias32, hck)
        ctx.cfg = (delta_softplus, chunk, A.dtype)
        return y.to(u.dtype), (last if return_last_state else None)

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
    chunk: int = CHUNK,
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
    check_state_size(n)
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    b, d, L = u.shape
    g = B.shape[1] if B.dim() == 4 else 1
    # dB: (b, g, n, L) with atomics; the deterministic partials (b, blocks, n, L) are checked
    # again where the backward allocates them
    nb = triton.cdiv(d, block_d(n, d // g)) if torch.are_deterministic_algorithms_enabled() else g
    check_int32_indexing(
        u=b * d * L,
        dB=b * max(g, nb) * n * L,
        chunk_states=b * triton.cdiv(L, chunk) * d * triton.next_power_of_2(n),
        scratch=b * chunk * d * triton.next_power_of_2(n),
    )
    # the chunk-entry states are only worth writing when a backward can follow
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    y, last = SelectiveScanTriton.apply(*inputs, delta_softplus, return_last_state, chunk, grad)
    return (y, last) if return_last_state else y


__all__ = ["CHUNK", "MAX_N", "selective_scan_triton"]
