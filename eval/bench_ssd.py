"""SSD (Mamba-2) scan benchmark: forward and forward+backward time against the state size N, per
backend, at a Mamba-2 layer shape (default mamba2-130m: d_model 768, expand 2 -> 1536 channels,
headdim 64 -> 24 heads, one group of B and C).

    python -m compressmamba.eval.bench_ssd                                # CUDA if present, else CPU
    python -m compressmamba.eval.bench_ssd --device cpu --batch 1 --seqlen 512
    python -m compressmamba.eval.bench_ssd --backends cpu,ref --seqlen 128     # against the time loop

Inputs are drawn as a Mamba-2 mixer feeds them (dt through softplus with a bias, D per head, a
SiLU(z) gate); the forward+backward differentiates every input. The CPU path runs blocks of
``--chunk-size`` steps (mamba2-130m's config uses 256); the Triton kernels the same where it is
16..128, else their own ``default_chunk``. GB/s count the bytes a fused scan must move at least
(``_min_bytes``); on CUDA the table adds the forward's share of the measured copy bandwidth.
"""

from __future__ import annotations

import torch
from compressmamba.eval.bench_timing import DTYPES, head_scan_args, print_table, reference_bandwidth, time_row

from compressmamba.kernels import ssd_scan_fn


def _inputs(b, l, h, p, g, n, device, dtype):
    gen = torch.Generator(device="cpu").manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    return dict(
        x=r(b, l, h, p).to(device, dtype),
        dt=(r(b, l, h) - 2.0).to(device, dtype),
        A=(-torch.rand(h, generator=gen) * 15 - 1).to(device),
        B=r(b, l, g, n).to(device, dtype),
        C=r(b, l, g, n).to(device, dtype),
        D=torch.rand(h, generator=gen).to(device),
        z=r(b, l, h, p).to(device, dtype),
        dt_bias=(torch.rand(h, generator=gen) * 0.1).to(device),
    )


def _chunk(args, backend):
    """The Triton kernels take chunks of 16..128 steps: a longer ``--chunk-size`` (the CPU
    path's 256) leaves them their own ``default_chunk``."""
    if backend == "triton" and args.chunk_size > 128:
        return None
    return args.chunk_size


def _min_bytes(b, l, h, p, g, n, bpe):
    """Bytes a fused scan must move at least: forward reads x, z, dt, B, C and writes y; the
    backward reads them again with dy and writes dx, dz, ddt, dB, dC."""
    fwd = bpe * (3 * b * l * h * p + 2 * b * l * g * n + b * l * h)
    return fwd, fwd + bpe * (5 * b * l * h * p + 4 * b * l * g * n + 2 * b * l * h)


def bench(args):
    """Rows (backend, N, fwd ms, fwd+bwd ms, fwd GB/s, fwd+bwd GB/s, note), printed as a
    markdown table; on CUDA (and in the dry run under Triton's interpreter) with the forward's
    share of the measured copy bandwidth."""
    dtype = DTYPES[args.dtype]
    h, p = args.d_inner // args.headdim, args.headdim
    bpe = torch.finfo(dtype).bits // 8
    rows = []
    for backend in args.backends:
        for n in args.states:
            inp = _inputs(args.batch, args.seqlen, h, p, args.groups, n, args.device, dtype)
            kw = dict(chunk_size=_chunk(args, backend), dt_softplus=True, backend=backend)
            fwd = lambda inp=inp, kw=kw: ssd_scan_fn(**inp, **kw)  # noqa: E731
            leaves = [v.requires_grad_() for v in inp.values()]

            def fwd_bwd(inp=inp, kw=kw, leaves=leaves):
                torch.autograd.grad(ssd_scan_fn(**inp, **kw).float().sum(), leaves)

            mins = _min_bytes(args.batch, args.seqlen, h, p, args.groups, n, bpe)
            rows.append(time_row(backend, n, fwd, fwd_bwd, args.device, args.reps, mins))
            if rows[-1][2] is None:
                break
    bw = reference_bandwidth(args.device)
    print(
        f"SSD scan, batch {args.batch}, seqlen {args.seqlen}, {h} heads x headdim {p}, {args.groups} group(s), "
        f"chunk {args.chunk_size} (triton: {args.chunk_size if args.chunk_size <= 128 else 'its default'}), "
        f"{args.dtype}, device {args.device}"
    )
    print_table(rows, bw, args.states[0], " (fwd+bwd)")
    if bw:
        print(f"\ndevice copy bandwidth: {bw:.0f} GB/s")
    return rows


def main(argv=None):
    return bench(head_scan_args(argv, __doc__, chunk_size=256))


if __name__ == "__main__":
    main()
