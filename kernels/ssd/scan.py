"""Triton SSD (Mamba-2) training kernels: the chunk kernels, the launchers, the autograd
Function, and the public op (in that order).

The chunked form of ``cpu.py`` in four kernels; a, Δ are (b, h, chunks, Q) fp32 buffers that
PyTorch prepares (softplus, zero-padding to whole chunks, within-chunk cumsum of Δ A), so
autograd carries their gradients on to dt, dt_bias and A:

    forward   _chunk_outer  S_c = Σ_s exp(a_last − a_s) Δ_s x_sᵀ B_s         per (chunk, batch, head)
              _pass         H_{c+1} = exp(a_last) H_c + S_c, storing each H_c   per (batch, head)
              _chunk_out    y = (C Bᵀ ∘ L ∘ Δ) x + exp(a) C H_cᵀ                per (chunk, batch, head)
    backward  _chunk_outer  E_c = Σ_t exp(a_t) dy_tᵀ C_t                         (same kernel)
              _pass         reversed: G_{c−1} = exp(a_last) G_c + E_c, storing each G_c;
                            G_c is the gradient of the state leaving chunk c, G_{−1} that of
                            the initial state
              _chunk_bwd    dx, dΔ, da, and per-head dB, dC from H_c, G_c and dy

L is the causal decay matrix exp(a_t − a_s) (t ≥ s). The forward programs hold whole (Q, p) and
(Q, n) tiles, p and n masked to powers of two (at least 16, what tl.dot takes) in registers and
never padded in memory; the backward walks n in blocks of BWD_N_BLOCK so that no tile of it
grows with n. B and C gradients are written per head and summed over a group's heads
by PyTorch (deterministic, no atomics). Inputs may be fp32, fp16 or bf16; every product
accumulates in fp32 (tl.dot with IEEE fp32 inputs: no TF32). Correct and simple first: no
autotuning yet, fixed warps, and chunks short enough that the tiles stay in registers
(``default_chunk``); not yet timed on a GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..limits import MAX_N, check_int32_indexing, check_state_size, triton_interpret
from .reference import process_dt, skip_and_gate

_INTERPRET = triton_interpret()
MAX_P = 256  # largest headdim, for the same reason
BWD_N_BLOCK = 16  # states per block of the backward (32 compiles without spills too, at more registers)
NUM_WARPS = 8  # of the chunk and passing kernels; the whole-chunk tiles spill with 4


def default_chunk(n: int) -> int:
    """Steps per chunk where the caller does not choose: 32 at padded N <= 32, 16 above. Chosen
    while the backward held whole (p, n) tiles (chunks of 64 spilled kilobytes); since it walks n
    in blocks of BWD_N_BLOCK, chunks of 32 compile without spills at every N as well
    (eval/kernel_report.py --ssd), but have not been timed against 16."""
    return 32 if _pad2(n) <= 32 else 16


def _pad2(v: int) -> int:
    """The register size of a dimension: the next power of two, at least 16 (tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(v))


@triton.jit
def _dot(a, b):
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _ids(H, heads_per_group, nc, Q: tl.constexpr):
    """This program's chunk, batch row, head and group, and the offset of its row of the
    (b, h, chunks, Q) buffers a and Δ."""
    pid_c = tl.program_id(0)
    pid_b = tl.program_id(1)
    pid_h = tl.program_id(2)
    grp = pid_h // heads_per_group
    ab = ((pid_b * H + pid_h) * nc + pid_c) * Q
    return pid_c, pid_b, pid_h, grp, ab


@triton.jit
def _load_tile(ptr, pid_b, t, col, s_b, s_l, s_c, s_k, offs, mt, mc):
    """A (Q, BLOCK) fp32 tile of a (b, l, ·, k) tensor: rows t (time), columns offs of index col
    of dim 2; zeros outside the masks."""
    p = ptr + pid_b * s_b + t[:, None] * s_l + col * s_c + offs[None, :] * s_k
    return tl.load(p, mask=mt[:, None] & mc[None, :], other=0.0).to(tl.float32)


@triton.jit
def _chunk_outer_kernel(
    X_ptr,
    Y_ptr,
    a_ptr,
    dt_ptr,
    out_ptr,
    L,
    H,
    P,
    N,
    nc,
    heads_per_group,
    s_xb,
    s_xl,
    s_xh,
    s_xp,
    s_yb,
    s_yl,
    s_yg,
    s_yn,
    FROM_END: tl.constexpr,
    Q: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """out[b, c, h] (p, n) = Σ_t w_t X_tᵀ Y_t over the chunk's steps, X (b, l, h, p), Y (b, l, g, n):
    w = exp(a_last − a) Δ (FROM_END: the chunk's state, X = x, Y = B) or exp(a) (X = dy, Y = C)."""
    pid_c, pid_b, pid_h, grp, ab = _ids(H, heads_per_group, nc, Q)
    offs_q = tl.arange(0, Q)
    t = pid_c * Q + offs_q
    mt = t < L
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mp, mn = offs_p < P, offs_n < N
    X = _load_tile(X_ptr, pid_b, t, pid_h, s_xb, s_xl, s_xh, s_xp, offs_p, mt, mp)
    Y = _load_tile(Y_ptr, pid_b, t, grp, s_yb, s_yl, s_yg, s_yn, offs_n, mt, mn)
    a = tl.load(a_ptr + ab + offs_q)
    if FROM_END:
        w = tl.exp(tl.load(a_ptr + ab + Q - 1) - a) * tl.load(dt_ptr + ab + offs_q)
    else:
        w = tl.exp(a)
    out = _dot(tl.trans(X * w[:, None]), Y)
    o = out_ptr + (((pid_b * nc + pid_c) * H + pid_h) * P + offs_p[:, None]) * N + offs_n[None, :]
    tl.store(o, out, mask=mp[:, None] & mn[None, :])


@triton.jit
def _pass_kernel(
    buf_ptr,
    a_ptr,
    start_ptr,
    end_ptr,
    H,
    P,
    N,
    nc,
    Q: tl.constexpr,
    HAS_START: tl.constexpr,
    REVERSE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """In place over buf (b, chunks, h, p, n): carry = start (or 0); for each chunk c (last to
    first if REVERSE): add = buf[c]; buf[c] = carry; carry = exp(a_last(c)) carry + add. Then
    end = carry. Forward: buf holds S_c in, H_c out. Reverse: E_c in, G_c out."""
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    m = (offs_p[:, None] < P) & (offs_n[None, :] < N)
    pn = offs_p[:, None] * N + offs_n[None, :]
    carry = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    if HAS_START:
        carry = tl.load(start_ptr + (pid_b * H + pid_h) * P * N + pn, mask=m, other=0.0).to(tl.float32)
    for i in range(0, nc):
        c = i
        if REVERSE:
            c = nc - 1 - i
        p = buf_ptr + ((pid_b * nc + c) * H + pid_h) * P * N + pn
        add = tl.load(p, mask=m, other=0.0)
        tl.store(p, carry, mask=m)
        a_last = tl.load(a_ptr + ((pid_b * H + pid_h) * nc + c) * Q + Q - 1)
        carry = tl.exp(a_last) * carry + add
    tl.store(end_ptr + (pid_b * H + pid_h) * P * N + pn, carry, mask=m)


@triton.jit
def _decay_matrix(a, offs_q):
    """exp(a_t − a_s) for t ≥ s, else 0 (masked before the exp: nothing overflows)."""
    causal = offs_q[:, None] >= offs_q[None, :]
    return tl.where(causal, tl.exp(tl.where(causal, a[:, None] - a[None, :], 0.0)), 0.0)


@triton.jit
def _chunk_out_kernel(
    x_ptr,
    B_ptr,
    C_ptr,
    a_ptr,
    dt_ptr,
    hs_ptr,
    y_ptr,
    L,
    H,
    P,
    N,
    nc,
    heads_per_group,
    s_xb,
    s_xl,
    s_xh,
    s_xp,
    s_bb,
    s_bl,
    s_bg,
    s_bn,
    s_cb,
    s_cl,
    s_cg,
    s_cn,
    Q: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """y (b, l, h, p) fp32 of one chunk and head: intra-chunk (C Bᵀ ∘ L ∘ Δ) x plus the entering
    state's exp(a) C H_cᵀ (hs: H_c (b, chunks, h, p, n))."""
    pid_c, pid_b, pid_h, grp, ab = _ids(H, heads_per_group, nc, Q)
    offs_q = tl.arange(0, Q)
    t = pid_c * Q + offs_q
    mt = t < L
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mp, mn = offs_p < P, offs_n < N
    x = _load_tile(x_ptr, pid_b, t, pid_h, s_xb, s_xl, s_xh, s_xp, offs_p, mt, mp)
    Bt = _load_tile(B_ptr, pid_b, t, grp, s_bb, s_bl, s_bg, s_bn, offs_n, mt, mn)
    Ct = _load_tile(C_ptr, pid_b, t, grp, s_cb, s_cl, s_cg, s_cn, offs_n, mt, mn)
    a = tl.load(a_ptr + ab + offs_q)
    dt = tl.load(dt_ptr + ab + offs_q)
    hp = hs_ptr + (((pid_b * nc + pid_c) * H + pid_h) * P + offs_p[:, None]) * N + offs_n[None, :]
    Hc = tl.load(hp, mask=mp[:, None] & mn[None, :], other=0.0)
    M = _dot(Ct, tl.trans(Bt)) * _decay_matrix(a, offs_q) * dt[None, :]
    y = _dot(M, x) + tl.exp(a)[:, None] * _dot(Ct, tl.trans(Hc))
    yp = y_ptr + ((pid_b * L + t[:, None]) * H + pid_h) * P + offs_p[None, :]
    tl.store(yp, y, mask=mt[:, None] & mp[None, :])


@triton.jit
def _chunk_bwd_kernel(
    x_ptr,
    B_ptr,
    C_ptr,
    a_ptr,
    dt_ptr,
    hs_ptr,
    gs_ptr,
    dy_ptr,
    dx_ptr,
    dB_ptr,
    dC_ptr,
    ddt_ptr,
    da_ptr,
    L,
    H,
    P,
    N,
    nc,
    heads_per_group,
    s_xb,
    s_xl,
    s_xh,
    s_xp,
    s_bb,
    s_bl,
    s_bg,
    s_bn,
    s_cb,
    s_cl,
    s_cg,
    s_cn,
    Q: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_NB: tl.constexpr,
):
    """Gradients of one chunk and head, given the entering state H_c, the gradient G_c of the
    leaving state and dy (b, l, h, p): dx (b, l, h, p), this head's dB, dC (b, l, h, n), and dΔ,
    da (b, h, chunks, Q). With M = C Bᵀ ∘ L, K = L ∘ (dy xᵀ) ∘ Δ, d = exp(a_last − a):
    dx = Δ R with R = Mᵀ dy + d (B G_cᵀ); dΔ = Σ_p x R; dC = K B + exp(a) dy H_c;
    dB = Kᵀ C + d Δ x G_c; da from the decays of L, of the inter-chunk term and of the state.

    The states n are walked in blocks of BLOCK_NB: dB and dC of a block need only K, so they are
    written inside the walk, and what sums over n (C Bᵀ, B G_cᵀ, C H_cᵀ, G_c ∘ H_c) is
    accumulated in (Q, Q) and (Q, p) tiles. No tile grows with n, so the kernel compiles for
    sm_90 without register spills up to n = 256 (whole (p, n) tiles spilled from n = 32 on)."""
    pid_c, pid_b, pid_h, grp, ab = _ids(H, heads_per_group, nc, Q)
    offs_q = tl.arange(0, Q)
    t = pid_c * Q + offs_q
    mt = t < L
    offs_p = tl.arange(0, BLOCK_P)
    mp = offs_p < P
    x = _load_tile(x_ptr, pid_b, t, pid_h, s_xb, s_xl, s_xh, s_xp, offs_p, mt, mp)
    row = ((pid_b * L + t[:, None]) * H + pid_h) * P + offs_p[None, :]  # (b, l, h, p) contiguous
    mqp = mt[:, None] & mp[None, :]
    dy = tl.load(dy_ptr + row, mask=mqp, other=0.0)
    a = tl.load(a_ptr + ab + offs_q)
    dt = tl.load(dt_ptr + ab + offs_q)
    a_last = tl.load(a_ptr + ab + Q - 1)
    ea = tl.exp(a)
    to_end = tl.exp(a_last - a)
    Lm = _decay_matrix(a, offs_q)
    K = Lm * _dot(dy, tl.trans(x)) * dt[None, :]  # [t, s]
    CB = tl.zeros((Q, Q), dtype=tl.float32)
    BG = tl.zeros((Q, BLOCK_P), dtype=tl.float32)  # G_c B_s
    CH = tl.zeros((Q, BLOCK_P), dtype=tl.float32)  # H_c C_t
    gh = tl.zeros((BLOCK_P,), dtype=tl.float32)  # Σ_n G_c ∘ H_c
    state = ((pid_b * nc + pid_c) * H + pid_h) * P
    for n0 in range(0, N, BLOCK_NB):
        offs_n = n0 + tl.arange(0, BLOCK_NB)
        mn = offs_n < N
        Bt = _load_tile(B_ptr, pid_b, t, grp, s_bb, s_bl, s_bg, s_bn, offs_n, mt, mn)
        Ct = _load_tile(C_ptr, pid_b, t, grp, s_cb, s_cl, s_cg, s_cn, offs_n, mt, mn)
        pn = (state + offs_p[:, None]) * N + offs_n[None, :]
        mpn = mp[:, None] & mn[None, :]
        Hc = tl.load(hs_ptr + pn, mask=mpn, other=0.0)
        Gc = tl.load(gs_ptr + pn, mask=mpn, other=0.0)
        CB += _dot(Ct, tl.trans(Bt))
        BG += _dot(Bt, tl.trans(Gc))
        CH += _dot(Ct, tl.trans(Hc))
        gh += tl.sum(Gc * Hc, axis=1)
        dC = _dot(K, Bt) + ea[:, None] * _dot(dy, Hc)
        dB = _dot(tl.trans(K), Ct) + (to_end * dt)[:, None] * _dot(x, Gc)
        bc = ((pid_b * L + t[:, None]) * H + pid_h) * N + offs_n[None, :]  # (b, l, h, n) contiguous
        mqn = mt[:, None] & mn[None, :]
        tl.store(dC_ptr + bc, dC, mask=mqn)
        tl.store(dB_ptr + bc, dB, mask=mqn)
    R = _dot(tl.trans(CB * Lm), dy) + to_end[:, None] * BG
    tl.store(dx_ptr + row, dt[:, None] * R, mask=mqp)
    tl.store(ddt_ptr + ab + offs_q, tl.sum(x * R, axis=1))
    # da: L's exp(a_t − a_s) gives +W to t and −W to s; y's exp(a_t) H_c C_t; the state's
    # exp(a_last − a_s) gives −V to s and +V to the chunk's last step, as does exp(a_last) H_c
    W = K * CB
    V = to_end * dt * tl.sum(x * BG, axis=1)
    da = tl.sum(W, axis=1) - tl.sum(W, axis=0) + ea * tl.sum(dy * CH, axis=1) - V
    last = tl.sum(V, axis=0) + tl.exp(a_last) * tl.sum(gh, axis=0)
    da += tl.where(offs_q == Q - 1, last, 0.0)
    tl.store(da_ptr + ab + offs_q, da)


def bwd_n_block(N: int) -> int:
    """States per block of the backward's walk over n (eval/kernel_report.py --ssd: no spills
    at any n up to MAX_N with this block)."""
    return min(_pad2(N), BWD_N_BLOCK)


def _grid(b, H, nc):
    return (nc, b, H)


def _blocks(P, N, Q):
    return dict(Q=Q, BLOCK_P=_pad2(P), BLOCK_N=_pad2(N), num_warps=1 if _INTERPRET else NUM_WARPS)


def _launch_fwd(x, B, C, dtp, acs, init):
    """y (b, l, h, p) fp32 without the D skip and the gate, the final state (b, h, p, n) fp32,
    and the states entering every chunk, hs (b, chunks, h, p, n) fp32, for the backward."""
    b, L, H, P = x.shape
    g, N = B.shape[2:]
    nc, Q = dtp.shape[2:]
    f32 = dict(device=x.device, dtype=torch.float32)
    blk = _blocks(P, N, Q)
    hs = torch.empty(b, nc, H, P, N, **f32)
    dims = (L, H, P, N, nc, H // g)
    _chunk_outer_kernel[_grid(b, H, nc)](x, B, acs, dtp, hs, *dims, *x.stride(), *B.stride(), FROM_END=True, **blk)
    final = torch.empty(b, H, P, N, **f32)
    start = init if init is not None else final  # placeholder pointer, never read
    _pass_kernel[(b, H)](hs, acs, start, final, H, P, N, nc, HAS_START=init is not None, REVERSE=False, **blk)
    y = torch.empty(b, L, H, P, **f32)
    strides = (*x.stride(), *B.stride(), *C.stride())
    _chunk_out_kernel[_grid(b, H, nc)](x, B, C, acs, dtp, hs, y, *dims, *strides, **blk)
    return y, final, hs


def _launch_bwd(x, B, C, dtp, acs, hs, dy, dfinal):
    """Gradients dx (b, l, h, p), dB, dC (b, l, g, n), dΔ and da (b, h, chunks, Q), and that of
    the initial state (b, h, p, n), all fp32. dy (b, l, h, p) is contiguous fp32."""
    b, L, H, P = x.shape
    g, N = B.shape[2:]
    nc, Q = dtp.shape[2:]
    f32 = dict(device=x.device, dtype=torch.float32)
    blk = _blocks(P, N, Q)
    dims = (L, H, P, N, nc, H // g)
    gs = torch.empty(b, nc, H, P, N, **f32)
    _chunk_outer_kernel[_grid(b, H, nc)](dy, C, acs, dtp, gs, *dims, *dy.stride(), *C.stride(), FROM_END=False, **blk)
    dinit = torch.empty(b, H, P, N, **f32)
    start = dfinal if dfinal is not None else dinit  # placeholder pointer, never read
    _pass_kernel[(b, H)](gs, acs, start, dinit, H, P, N, nc, HAS_START=dfinal is not None, REVERSE=True, **blk)
    dx = torch.empty(b, L, H, P, **f32)
    dBh, dCh = torch.empty(b, L, H, N, **f32), torch.empty(b, L, H, N, **f32)
    ddt, da = torch.empty(b, H, nc, Q, **f32), torch.empty(b, H, nc, Q, **f32)
    strides = (*x.stride(), *B.stride(), *C.stride())
    # fmt: off
    _chunk_bwd_kernel[_grid(b, H, nc)](
        x, B, C, acs, dtp, hs, gs, dy, dx, dBh, dCh, ddt, da, *dims, *strides, BLOCK_NB=bwd_n_block(N), **blk
    )
    # fmt: on
    # a group's heads share B_t and C_t: sum their per-head gradients in a fixed order
    dB = dBh.view(b, L, g, H // g, N).sum(3)
    dC = dCh.view(b, L, g, H // g, N).sum(3)
    return dx, dB, dC, ddt, da, dinit


class SSDChunkScanTriton(torch.autograd.Function):
    """Autograd wrapper of the chunk kernels: x (b, l, h, p), B, C (b, l, g, n), Δ and a
    (b, h, chunks, Q) fp32, initial state (b, h, p, n) or None -> y (b, l, h, p) fp32 (no skip,
    no gate) and the final state (b, h, p, n) fp32. Saves the inputs and the chunk-entry states."""

    @staticmethod
    def forward(ctx, x, B, C, dtp, acs, init):
        ctx.set_materialize_grads(False)
        init32 = init.float().contiguous() if init is not None else None
        y, final, hs = _launch_fwd(x, B, C, dtp, acs, init32)
        ctx.save_for_backward(x, B, C, dtp, acs, hs)
        ctx.init_dtype = init.dtype if init is not None else None
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, B, C, dtp, acs, hs = ctx.saved_tensors
        dy = torch.zeros(x.shape, device=x.device) if dy is None else dy.float().contiguous()
        dfinal = dfinal.float().contiguous() if dfinal is not None else None
        dx, dB, dC, ddt, da, dinit = _launch_bwd(x, B, C, dtp, acs, hs, dy, dfinal)
        dinit = dinit.to(ctx.init_dtype) if ctx.init_dtype is not None else None
        return dx.to(x.dtype), dB.to(B.dtype), dC.to(C.dtype), ddt, da, dinit


def ssd_scan_triton(
    x,
    dt,
    A,
    B,
    C,
    chunk_size: int | None = None,
    D=None,
    z=None,
    dt_bias=None,
    initial_states=None,
    dt_softplus=False,
    return_final_states=False,
):
    """SSD scan in Triton, forward and backward; the signature of ``ssd_scan_ref``.

    Shapes: x, z (b, l, h, p) with p <= MAX_P; dt (b, l, h); A, dt_bias (h,); B, C (b, l, g, n)
    with g dividing h and 1 <= n <= MAX_N; D (h,) or (h, p); initial_states (b, h, p, n). x, B,
    C may be fp32, fp16 or bf16 and any strides; everything is computed in fp32. ``chunk_size``
    is the kernels' block of steps, a power of two in 16..128, by default ``default_chunk(n)``
    (the result does not depend on it beyond rounding). Returns y (b, l, h, p) in x's dtype, and with ``return_final_states`` also
    the final state (b, h, p, n) in fp32. Shapes are checked by ``compressmamba.kernels.ssd_scan_fn``;
    this function checks only what the kernels themselves cannot do.

    Δ (softplus, bias, padding to whole chunks, the within-chunk cumsum of Δ A) and the D skip
    and SiLU(z) gate are PyTorch ops around the kernels, differentiated by autograd.
    """
    b, L, H, P = x.shape
    N = B.shape[-1]
    chunk_size = default_chunk(N) if chunk_size is None else chunk_size
    if chunk_size not in (16, 32, 64, 128):
        raise ValueError(f"chunk_size must be a power of two in 16..128 for the Triton kernels, got {chunk_size!r}")
    check_state_size(N)
    if not 1 <= P <= MAX_P:
        raise ValueError(f"headdim {P} exceeds the Triton kernels' range 1..{MAX_P}; use backend='cpu'")
    Q = chunk_size
    nc = triton.cdiv(L, Q)
    check_int32_indexing(x=b * L * H * P, chunk_states=b * nc * H * P * N, dB_per_head=b * L * H * N)
    delta = process_dt(dt, dt_bias, dt_softplus, torch.float32)  # (b, l, h)
    dtp = F.pad(delta, (0, 0, 0, nc * Q - L)).view(b, nc, Q, H).permute(0, 3, 1, 2).contiguous()
    acs = torch.cumsum(dtp * A.float()[:, None, None], dim=-1)  # (b, h, chunks, Q)
    y, final = SSDChunkScanTriton.apply(x, B, C, dtp, acs, initial_states)
    y = skip_and_gate(y, x, D, z, torch.float32).to(x.dtype)
    return (y, final) if return_final_states else y


__all__ = ["MAX_N", "MAX_P", "default_chunk", "ssd_scan_triton"]
