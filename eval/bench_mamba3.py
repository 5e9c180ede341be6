"""Mamba-3 scan benchmark: forward and forward+backward time against the state size N, per
backend, at a Mamba-3 layer shape (default 130M class: d_model 768, expand 2 -> 1536 channels,
headdim 64 -> 24 heads, one group, SISO; ``--mimo-rank R`` for MIMO), half the coordinates turned.

    python -m compressmamba.eval.bench_mamba3                               # CUDA if present, else CPU
    python -m compressmamba.eval.bench_mamba3 --device cpu --seqlen 256
    python -m compressmamba.eval.bench_mamba3 --backends cpu,ref --seqlen 64    # against the time loop

Inputs are drawn as the mixer feeds them (Δ after softplus, A below −A_floor, λ in (0, 1)); the
forward+backward differentiates every input. On CUDA ``triton`` is the forward kernel whose
backward recomputes the PyTorch chunked path. GB/s count the bytes a fused scan must move at
least (x, B, C, Δ, A, λ, θ read, y written).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from compressmamba.eval.bench_timing import DTYPES, head_scan_args, print_table, reference_bandwidth, time_row
from compressmamba.kernels.mamba3 import mamba3_scan_fn


def _inputs(b, l, h, p, g, n, r, device, dtype):
    gen = torch.Generator(device="cpu").manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    inp = dict(
        x=rnd(b, l, h, p),
        delta=F.softplus(rnd(b, l, h) - 2.0),
        A=-(F.softplus(rnd(b, l, h)) + 1e-4),
        trap=torch.sigmoid(rnd(b, l, h)),
        B=rnd(b, l, r, g, n),
        C=rnd(b, l, r, g, n),
        theta=rnd(b, l, n // 4),
        B_bias=1 + 0.1 * rnd(h, r, n),
        C_bias=1 + 0.1 * rnd(h, r, n),
        D=torch.ones(h),
        mimo_x=torch.full((h, r, p), 1.0 / r) if r > 1 else None,
    )
    return {k: (v.to(device, dtype) if v is not None else None) for k, v in inp.items()}


def _min_bytes(b, l, h, p, g, n, r, bpe):
    fwd = bpe * (b * l * h * p * (1 + r) + 2 * b * l * r * g * n + 3 * b * l * h + b * l * n // 4)
    return fwd, 3 * fwd


def bench(args):
    """Rows (backend, N, fwd ms, fwd+bwd ms, fwd GB/s, fwd+bwd GB/s, note), printed as a table."""
    dtype = DTYPES[args.dtype]
    h, p = args.d_inner // args.headdim, args.headdim
    bpe = torch.finfo(dtype).bits // 8
    rows = []
    for backend in args.backends:
        for n in args.states:
            inp = _inputs(args.batch, args.seqlen, h, p, args.groups, n, args.mimo_rank, args.device, dtype)
            kw = dict(chunk_size=args.chunk_size, backend=backend)
            fwd = lambda inp=inp, kw=kw: mamba3_scan_fn(**inp, **kw)  # noqa: E731
            leaves = [v.requires_grad_() for v in inp.values() if v is not None]

            def fwd_bwd(inp=inp, kw=kw, leaves=leaves):
                torch.autograd.grad(mamba3_scan_fn(**inp, **kw).float().sum(), leaves)

            mins = _min_bytes(args.batch, args.seqlen, h, p, args.groups, n, args.mimo_rank, bpe)
            rows.append(time_row(backend, n, fwd, fwd_bwd, args.device, args.reps, mins))
            if rows[-1][2] is None:
                break
    bw = reference_bandwidth(args.device)
    print(
        f"Mamba-3 scan, batch {args.batch}, seqlen {args.seqlen}, {h} heads x headdim {p}, {args.groups} group(s), "
        f"rank {args.mimo_rank}, chunk {args.chunk_size}, {args.dtype}, device {args.device}"
    )
    print_table(rows, bw, args.states[0], " (fwd+bwd)")
    return rows


def main(argv=None):
    return bench(head_scan_args(argv, __doc__, chunk_size=64, mimo=True))


if __name__ == "__main__":
    main()
