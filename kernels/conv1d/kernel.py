"""Triton causal depthwise conv1d: forward, backward and the autograd Function.

out[b, c, t] = act(bias[c] + Σ_k w[c, k] · x[b, c, t − (W − 1) + k]), with x read as zero before
t = 0. Each program owns a (BLOCK_D channels × BLOCK_L steps) tile of one batch row; loads run
along the sequence (coalesced for the usual (b, d, L) layout, any strides accepted).

The backward recomputes the pre-activation where SiLU needs it instead of storing it: the tile's
dx at step t gathers dpre at t, t+1, …, t+W−1, so it evaluates the pre-activation at W shifted
positions (W² loads of x, all from cache for W ≤ 4). The weight and bias gradients are written
as one partial per (batch row, sequence block) and summed afterwards in a fixed order
(deterministic, no atomics).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..limits import check_int32_indexing, triton_interpret

_INTERPRET = triton_interpret()
MAX_WIDTH = 8  # widths unrolled at compile time; wider filters run the torch path
BLOCK_D, BLOCK_L = 16, 64  # 1024-element tiles: the backward (W² recomputation) spills at 16x128, 4 warps


def _configs():
    """Warps to tune per (d, width); the interpreter fails on autotune with several configs, and
    COMPRESSMAMBA_AUTOTUNE=0 keeps the 4 warps the compile report checks."""
    if _INTERPRET:
        return [triton.Config({}, num_warps=1)]
    if os.environ.get("COMPRESSMAMBA_AUTOTUNE", "1") == "0":
        return [triton.Config({}, num_warps=4)]
    return [triton.Config({}, num_warps=w) for w in (4, 8)]  # 2 warps spill in the backward


_TUNE = dict(configs=_configs(), key=["d", "W"])


@triton.jit
def _pre_act(
    xb_ptr,
    w_ptr,
    bias_ptr,
    offs_d,
    pos,
    md,
    L,
    s_xd,
    s_xl,
    W: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """bias + Σ_k w[:, k] x[:, pos − (W − 1) + k] for a (channels, positions) tile, fp32."""
    acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    for k in tl.static_range(W):
        src = pos - (W - 1) + k
        m = md[:, None] & ((src >= 0) & (src < L))[None, :]
        xk = tl.load(xb_ptr + offs_d[:, None] * s_xd + src[None, :] * s_xl, mask=m, other=0.0).to(tl.float32)
        wk = tl.load(w_ptr + offs_d * W + k, mask=md, other=0.0)
        acc += wk[:, None] * xk
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=md, other=0.0)[:, None]
    return acc


@triton.jit
def _tile(d, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """This program's batch row, sequence block, channel and step offsets, and channel mask."""
    pid_l, pid_d, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    return pid_b, pid_l, offs_d, pid_l * BLOCK_L + tl.arange(0, BLOCK_L), offs_d < d


@triton.autotune(**_TUNE)
@triton.jit(do_not_specialize=["L"])
def _conv_fwd_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    out_ptr,
    d,
    L,
    s_xb,
    s_xd,
    s_xl,
    W: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    pid_b, pid_l, offs_d, offs_l, md = _tile(d, BLOCK_D, BLOCK_L)
    acc = _pre_act(
        x_ptr + pid_b * s_xb, w_ptr, bias_ptr, offs_d, offs_l, md, L, s_xd, s_xl, W, HAS_BIAS, BLOCK_D, BLOCK_L
    )
    if SILU:
        acc = acc * tl.sigmoid(acc)
    out = out_ptr + (pid_b * d + offs_d[:, None]) * L + offs_l[None, :]
    tl.store(out, acc, mask=md[:, None] & (offs_l < L)[None, :])


@triton.autotune(**_TUNE)
@triton.jit(do_not_specialize=["L"])
def _conv_bwd_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    dout_ptr,
    dx_ptr,
    dw_ptr,
    dbias_ptr,
    d,
    L,
    n_lblocks,
    s_xb,
    s_xd,
    s_xl,
    s_gb,
    s_gd,
    s_gl,
    W: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    pid_b, pid_l, offs_d, offs_l, md = _tile(d, BLOCK_D, BLOCK_L)
    xb = x_ptr + pid_b * s_xb
    gb = dout_ptr + pid_b * s_gb
    part = (pid_b * n_lblocks + pid_l) * d + offs_d  # this program's row of the dw, dbias partials
    dx = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    # dx[t] = Σ_m w[W − 1 − m] · dpre[t + m]; dpre = dout · SiLU'(pre), the pre-activation recomputed
    for m in tl.static_range(W):
        pos = offs_l + m
        mg = md[:, None] & (pos < L)[None, :]
        dpre = tl.load(gb + offs_d[:, None] * s_gd + pos[None, :] * s_gl, mask=mg, other=0.0).to(tl.float32)
        if SILU:
            pre = _pre_act(xb, w_ptr, bias_ptr, offs_d, pos, md, L, s_xd, s_xl, W, HAS_BIAS, BLOCK_D, BLOCK_L)
            sig = tl.sigmoid(pre)
            dpre = dpre * sig * (1.0 + pre * (1.0 - sig))
        wm = tl.load(w_ptr + offs_d * W + (W - 1 - m), mask=md, other=0.0)
        dx += wm[:, None] * dpre
        if m == 0:  # the tile's own steps: weight and bias gradients
            for k in tl.static_range(W):
                src = offs_l - (W - 1) + k
                mx = md[:, None] & ((src >= 0) & (src < L))[None, :]
                xk = tl.load(xb + offs_d[:, None] * s_xd + src[None, :] * s_xl, mask=mx, other=0.0).to(tl.float32)
                tl.store(dw_ptr + part * W + k, tl.sum(dpre * xk, axis=1), mask=md)
            if HAS_BIAS:
                tl.store(dbias_ptr + part, tl.sum(dpre, axis=1), mask=md)
    out = dx_ptr + (pid_b * d + offs_d[:, None]) * L + offs_l[None, :]
    tl.store(out, dx, mask=md[:, None] & (offs_l < L)[None, :])


def _grid(b, d, L):
    return (triton.cdiv(L, BLOCK_L), triton.cdiv(d, BLOCK_D), b)


class CausalConv1dTriton(torch.autograd.Function):
    """Saves x, the weight and the bias; the backward recomputes what it needs."""

    @staticmethod
    def forward(ctx, x, weight, bias, silu):
        b, d, L = x.shape
        W = weight.shape[1]
        w32 = weight.float().contiguous()
        bias32 = bias.float().contiguous() if bias is not None else None
        out = torch.empty(b, d, L, device=x.device, dtype=torch.float32)
        flags = dict(W=W, HAS_BIAS=bias is not None, SILU=silu, BLOCK_D=BLOCK_D, BLOCK_L=BLOCK_L)
        _conv_fwd_kernel[_grid(b, d, L)](x, w32, bias32 if bias32 is not None else w32, out, d, L, *x.stride(), **flags)
        ctx.save_for_backward(x, w32, bias32)
        ctx.cfg = (silu, weight.dtype, bias.dtype if bias is not None else None)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, dout):
        x, w32, bias32 = ctx.saved_tensors
        silu, w_dtype, b_dtype = ctx.cfg
        b, d, L = x.shape
        W = w32.shape[1]
        grid = _grid(b, d, L)
        f32 = dict(device=x.device, dtype=torch.float32)
        dx = torch.empty(b, d, L, **f32)
        dw = torch.empty(b, grid[0], d, W, **f32)
        dbias = torch.empty(b, grid[0], d, **f32)
        flags = dict(W=W, HAS_BIAS=bias32 is not None, SILU=silu, BLOCK_D=BLOCK_D, BLOCK_L=BLOCK_L)
        bias_arg = bias32 if bias32 is not None else w32
        args = (x, w32, bias_arg, dout, dx, dw, dbias, d, L, grid[0], *x.stride(), *dout.stride())
        _conv_bwd_kernel[grid](*args, **flags)
        db = dbias.sum((0, 1)).to(b_dtype) if bias32 is not None else None
        return dx.to(x.dtype), dw.sum((0, 1)).to(w_dtype), db, None


def causal_conv1d_triton(x, weight, bias=None, silu: bool = False):
    """x (b, d, L) in fp32/fp16/bf16, any strides; weight (d, W) with W <= MAX_WIDTH; bias (d,).
    Returns (b, d, L) in x's dtype (fp32 accumulation); differentiable in x, weight and bias."""
    if not 1 <= weight.shape[1] <= MAX_WIDTH:
        raise ValueError(f"weight has width {weight.shape[1]}, the Triton kernel supports 1..{MAX_WIDTH}")
    check_int32_indexing(x=x.numel())
    return CausalConv1dTriton.apply(x, weight, bias, bool(silu))


__all__ = ["MAX_WIDTH", "causal_conv1d_triton"]
