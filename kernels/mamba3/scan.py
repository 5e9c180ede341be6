"""Triton Mamba-3 scan, forward, and its decode step (the same kernel over one token), for any N.

The host does the elementwise parts in PyTorch (accumulated angles, rotation, biases, mimo_x,
α, β, γ: :func:`host_inputs`); the kernel runs the recurrence with the head's (P, N) state in
registers, one program per (batch row, head, block of P channels), looping over time:

    u_t = Σ_r v_{t,r} ⊗ k_{t,r};   h_t = α_t h_{t−1} + β_t u_{t−1} + γ_t u_t;   y_{t,r} = h_t q_{t,r} + D v_{t,r}

N and P are padded to powers of two in registers and masked. The backward is not a Triton kernel:
``Mamba3ScanTriton.backward`` recomputes the chunked PyTorch path (kernels/mamba3/cpu.py, on the
same device) and differentiates it, so gradients equal the CPU path's.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from compressmamba.kernels.limits import MAX_N, check_int32_indexing

from .cpu import mamba3_scan_cpu, rotated_keys
from .reference import compute_dtype, rank_values, zero_state

MAX_P = 256


@triton.jit
def _mamba3_fwd_kernel(
    k_ptr, q_ptr, v_ptr, a_ptr, bt_ptr, g_ptr, D_ptr, h0_ptr, u0_ptr, y_ptr, hT_ptr,
    L, H, P, N,
    s_kb, s_kl, s_kr, s_kh,
    s_vb, s_vl, s_vr, s_vh,
    s_ab, s_al,
    s_hb, s_hh, s_hp,
    R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    h = tl.program_id(1)
    pb = tl.program_id(2)
    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mp, mn = offs_p < P, offs_n < N
    m2 = mp[:, None] & mn[None, :]
    hoff = b * s_hb + h * s_hh + offs_p[:, None] * s_hp + offs_n[None, :]
    state = tl.load(h0_ptr + hoff, mask=m2, other=0.0).to(tl.float32)
    prev = tl.load(u0_ptr + hoff, mask=m2, other=0.0).to(tl.float32)
    d = tl.load(D_ptr + h).to(tl.float32)
    for t in range(L):
        aoff = b * s_ab + t * s_al + h
        alpha = tl.load(a_ptr + aoff).to(tl.float32)
        beta = tl.load(bt_ptr + aoff).to(tl.float32)
        gamma = tl.load(g_ptr + aoff).to(tl.float32)
        u = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
        for r in tl.static_range(R):
            k = tl.load(k_ptr + b * s_kb + t * s_kl + r * s_kr + h * s_kh + offs_n, mask=mn, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + b * s_vb + t * s_vl + r * s_vr + h * s_vh + offs_p, mask=mp, other=0.0).to(tl.float32)
            u += v[:, None] * k[None, :]
        state = alpha * state + beta * prev + gamma * u
        prev = u
        for r in tl.static_range(R):
            q = tl.load(q_ptr + b * s_kb + t * s_kl + r * s_kr + h * s_kh + offs_n, mask=mn, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + b * s_vb + t * s_vl + r * s_vr + h * s_vh + offs_p, mask=mp, other=0.0).to(tl.float32)
            y = tl.sum(state * q[None, :], axis=1) + d * v
            tl.store(y_ptr + b * s_vb + t * s_vl + r * s_vr + h * s_vh + offs_p, y, mask=mp)
    tl.store(hT_ptr + hoff, state, mask=m2)


def host_inputs(x, delta, A, trap, B, C, theta, B_bias, C_bias, mimo_x, initial_state):
    """The elementwise parts in PyTorch, in fp32 (float64 for float64 x): φ (b, l, H, S), rotated
    k, q (b, l, R, H, N), v (b, l, R, H, P), α, β, γ (b, l, H), h0 and u_{−1} (b, H, P, N)."""
    ct = compute_dtype(x)
    b, l, h, p = x.shape
    r, n, s = B.shape[2], B.shape[-1], theta.shape[-1]
    angle0, h0, k0, x0 = (t.to(ct) for t in (initial_state or zero_state(b, h, p, n, s, r, ct, x.device)))
    dl, lam = delta.to(ct), trap.to(ct)
    phi, k, q = rotated_keys(B, C, theta, dl, B_bias, C_bias, angle0, h, ct)
    mx = None if mimo_x is None else mimo_x.to(ct)
    v = rank_values(x.to(ct), mx)
    alpha = torch.exp(dl * A.to(ct))
    u0 = torch.einsum("brhp,brhn->bhpn", rank_values(x0, mx), k0)
    return phi, k, q, v, alpha, (1 - lam) * dl * alpha, lam * dl, h0, u0


def _launch(k, q, v, alpha, beta, gamma, D, h0, u0):
    b, l, r, h, n = k.shape
    p = v.shape[-1]
    if n > MAX_N or p > MAX_P:
        raise ValueError(
            f"Triton Mamba-3 scan holds N <= {MAX_N} and P <= {MAX_P}; got N={n}, P={p}: use backend='cpu'"
        )
    check_int32_indexing(k=k.numel(), v=v.numel(), state=h0.numel())
    k, q, v = k.contiguous(), q.contiguous(), v.contiguous()
    alpha, beta, gamma = alpha.contiguous(), beta.contiguous(), gamma.contiguous()
    h0, u0 = h0.contiguous(), u0.contiguous()
    y = torch.empty_like(v)
    hT = torch.empty_like(h0)
    block_p = min(triton.next_power_of_2(p), 32)
    grid = (b, h, math.ceil(p / block_p))
    _mamba3_fwd_kernel[grid](
        k, q, v, alpha, beta, gamma, D.contiguous(), h0, u0, y, hT,
        l, h, p, n,
        k.stride(0), k.stride(1), k.stride(2), k.stride(3),
        v.stride(0), v.stride(1), v.stride(2), v.stride(3),
        alpha.stride(0), alpha.stride(1),
        h0.stride(0), h0.stride(1), h0.stride(2),
        R=r, BLOCK_P=block_p, BLOCK_N=triton.next_power_of_2(n),
    )  # fmt: skip
    return y, hT


_NAMES = ("x", "delta", "A", "trap", "B", "C", "theta", "B_bias", "C_bias", "D", "mimo_x")


class _Mamba3Triton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, n_state, *flat):
        args = dict(zip(_NAMES, flat[: len(_NAMES)]))
        state = tuple(flat[len(_NAMES) :]) if n_state else None
        ctx.save_for_backward(*[t for t in flat if t is not None])
        ctx.layout = [t is not None for t in flat]
        ctx.n_state = n_state
        x = args["x"]
        D = args["D"] if args["D"] is not None else x.new_zeros(x.shape[2])
        host = host_inputs(**{k: v for k, v in args.items() if k != "D"}, initial_state=state)
        phi, k, q, v, alpha, beta, gamma, h0, u0 = host
        with torch.no_grad():
            y, hT = _launch(k, q, v, alpha, beta, gamma, D.to(k.dtype), h0, u0)
        return y.to(x.dtype), phi[:, -1].contiguous(), hT, k[:, -1].contiguous(), x[:, -1].to(k.dtype)

    @staticmethod
    def backward(ctx, gy, *gstate):
        saved = iter(ctx.saved_tensors)
        flat = [next(saved) if present else None for present in ctx.layout]
        leaves = [t.detach().requires_grad_(t.requires_grad) if t is not None else None for t in flat]
        args = dict(zip(_NAMES, leaves[: len(_NAMES)]))
        state = tuple(leaves[len(_NAMES) :]) if ctx.n_state else None
        with torch.enable_grad():
            y, st = mamba3_scan_cpu(**args, initial_state=state, return_final_state=True)
            outs, grads = [], []
            for o, g in zip((y, *st), (gy, *gstate)):
                if g is not None and o.requires_grad:
                    outs.append(o)
                    grads.append(g)
            wrt = [t for t in leaves if t is not None and t.requires_grad]
            got = iter(torch.autograd.grad(outs, wrt, grads, allow_unused=True) if outs and wrt else [])
        result = [next(got) if t is not None and t.requires_grad else None for t in leaves]
        return (None, *result)


def mamba3_scan_triton(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    trap: Tensor,
    B: Tensor,
    C: Tensor,
    theta: Tensor,
    B_bias: Tensor,
    C_bias: Tensor,
    D: Tensor | None = None,
    mimo_x: Tensor | None = None,
    initial_state: tuple | None = None,
    return_final_state: bool = False,
    chunk_size: int | None = None,
):
    """The signature of :func:`reference.mamba3_scan_ref` (``chunk_size`` accepted and ignored);
    Triton forward, gradients through the recomputed PyTorch path."""
    flat = (x, delta, A, trap, B, C, theta, B_bias, C_bias, D, mimo_x, *(initial_state or ()))
    y, *state = _Mamba3Triton.apply(initial_state is not None, *flat)
    return (y, tuple(state)) if return_final_state else y


def mamba3_step_triton(state: tuple, x, delta, A, trap, B, C, theta, B_bias, C_bias, D=None, mimo_x=None):
    """One decode token through the same kernel: the signature of :func:`reference.mamba3_step_ref`."""
    one = lambda t: t.unsqueeze(1)
    y, new = mamba3_scan_triton(
        one(x), one(delta), one(A), one(trap), one(B), one(C), one(theta), B_bias, C_bias, D, mimo_x,
        initial_state=state, return_final_state=True,
    )  # fmt: skip
    return y[:, 0], new
