"""Selective-scan benchmark: forward and forward+backward time, achieved GB/s against the bytes a
scan must move at least, and the speed-up as N shrinks, for each available backend.

    python -m compressmamba.eval.bench_scan                       # Mamba-130m layer shape on CUDA
    python -m compressmamba.eval.bench_scan --device cpu --batch 2 --dim 256 --seqlen 512
    python -m compressmamba.eval.bench_scan --conv-only                # the causal conv1d table
    (whole models against transformers: python -m compressmamba.eval.bench_model)

Minimum bytes: read u, delta, z (b·d·l each), B, C (b·n·l each), write y (b·d·l), in the input
dtype; the backward reads those again plus dy and writes du, ddelta, dz, dB, dC. On CUDA the
table also gives the forward's share of the device's copy bandwidth (measured here with a large
device-to-device copy) and checks the targets of issues 3 and 21: N=16 at least as fast as
mamba-ssm, N=16 forward+backward at most 1/4 of N=128, the forward at the smallest N measured
at 60 % of copy bandwidth or more.

A second table times the causal depthwise conv1d (width 4, SiLU) per backend.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util

import torch
from compressmamba.eval.bench_timing import (
    DTYPES,
    best_time,
    interpreting,
    print_table,
    reference_bandwidth,
    time_row,
)

from compressmamba.kernels import causal_conv1d_fn, selective_scan_fn


def _inputs(b, d, n, l, device, dtype):
    g = torch.Generator(device="cpu").manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)
    return dict(
        u=r(b, d, l),
        delta=r(b, d, l) * 0.5,
        A=-torch.rand(d, n, generator=g).to(device) - 0.5,
        B=r(b, n, l),
        C=r(b, n, l),
        D=torch.rand(d, generator=g).to(device),
        z=r(b, d, l),
        delta_bias=torch.rand(d, generator=g).to(device) * 0.1,
    )


def _variants(args):
    """(label, scan function) per backend; the Triton kernel once per ``--chunks`` value, labelled
    plain "triton" at its default chunk."""
    variants = []
    if args.device.startswith("cuda") or interpreting():
        from compressmamba.kernels.selective_scan.scan import CHUNK, selective_scan_triton

        for c in args.chunks or [CHUNK]:
            label = "triton" if c == CHUNK else f"triton c={c}"
            variants.append((label, functools.partial(selective_scan_triton, chunk=c)))
    variants.append(("cpu", functools.partial(selective_scan_fn, backend="cpu")))
    if args.device.startswith("cuda") and importlib.util.find_spec("mamba_ssm") is not None:
        variants.append(("mamba_ssm", functools.partial(selective_scan_fn, backend="mamba_ssm")))
    if args.backends:
        variants = [v for v in variants if v[0].split()[0] in args.backends]
    return variants


def bench(args):
    dtype = DTYPES[args.dtype]
    b, d, l = args.batch, args.dim, args.seqlen
    rows = []
    for backend, scan in _variants(args):
        for n in args.states:
            inp = _inputs(b, d, n, l, args.device, dtype)
            fwd = lambda inp=inp, scan=scan: scan(**inp, delta_softplus=True)  # noqa: E731
            grads = {k: v.requires_grad_() for k, v in inp.items() if k in ("u", "delta", "A", "B", "C", "D", "z")}

            def fwd_bwd(inp=inp, grads=grads, scan=scan):
                y = scan(**inp, delta_softplus=True)
                torch.autograd.grad(y.float().sum(), list(grads.values()))

            bpe = torch.finfo(dtype).bits // 8
            bytes_f = bpe * (4 * b * d * l + 2 * b * n * l)
            bytes_fb = bytes_f + bpe * (5 * b * d * l + 4 * b * n * l)
            rows.append(time_row(backend, n, fwd, fwd_bwd, args.device, args.reps, (bytes_f, bytes_fb)))
            if rows[-1][2] is None:
                break
    bw = reference_bandwidth(args.device)
    print(f"selective scan, batch {b}, dim {d}, seqlen {l}, {args.dtype}, device {args.device}")
    print_table(rows, bw, args.states[0])
    if bw:
        _targets(rows, bw)
    return rows


def _targets(rows, bw):
    """Print issue 3's targets against the measured rows (those that were measured)."""
    t = {(r[0], r[1]): r for r in rows if r[2] is not None}
    print(f"\ndevice copy bandwidth: {bw:.0f} GB/s")
    checks = []
    if ("triton", 16) in t and ("mamba_ssm", 16) in t:
        ratio = t["mamba_ssm", 16][3] / t["triton", 16][3]
        checks.append(("N=16 fwd+bwd speed vs mamba-ssm", f"{ratio:.2f}x", ratio >= 1.0, ">= 1.0x"))
    if ("triton", 16) in t and ("triton", 128) in t:
        ratio = t["triton", 16][3] / t["triton", 128][3]
        checks.append(("N=16 / N=128 fwd+bwd time", f"{ratio:.2f}", ratio <= 0.25, "<= 0.25"))
    small = min((n for backend, n in t if backend == "triton"), default=None)
    if small is not None:  # the smallest N measured: the scan is then closest to a copy
        share = t["triton", small][4] / bw
        checks.append((f"N={small} fwd share of copy bandwidth", f"{share:.0%}", share >= 0.6, ">= 60%"))
    for name, value, ok, goal in checks:
        print(f"- {name}: {value} (target {goal}: {'met' if ok else 'MISSED'})")


def bench_conv(args, width=4):
    """Causal depthwise conv1d (SiLU) per backend: forward and forward+backward."""
    dtype = DTYPES[args.dtype]
    b, d, l = args.batch, args.dim, args.seqlen
    backends = ["torch"]
    if args.device.startswith("cuda") or interpreting():
        backends = ["triton", "torch"]
        try:
            import causal_conv1d  # noqa: F401

            backends.append("causal_conv1d")
        except ImportError:
            pass
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(b, d, l, generator=g).to(args.device, dtype).requires_grad_()
    w = torch.randn(d, width, generator=g).to(args.device, dtype).requires_grad_()
    bias = torch.randn(d, generator=g).to(args.device, dtype).requires_grad_()
    bpe = torch.finfo(dtype).bits // 8
    bytes_f, bytes_fb = bpe * 2 * b * d * l, bpe * 5 * b * d * l  # fwd: x, out; bwd also dout, x, dx
    print(f"\ncausal conv1d, width {width}, SiLU, batch {b}, dim {d}, seqlen {l}, {args.dtype}, device {args.device}")
    print("| backend | fwd ms | fwd+bwd ms | fwd GB/s | fwd+bwd GB/s |")
    print("|---|---|---|---|---|")
    for backend in backends:
        fwd = lambda backend=backend: causal_conv1d_fn(x, w, bias, "silu", backend=backend)

        def fwd_bwd(backend=backend):
            torch.autograd.grad(causal_conv1d_fn(x, w, bias, "silu", backend=backend).float().sum(), (x, w, bias))

        with torch.no_grad():
            t_f = best_time(fwd, args.device, args.reps)
        t_fb = best_time(fwd_bwd, args.device, args.reps)
        gbs = f"{bytes_f / t_f / 1e9:.1f} | {bytes_fb / t_fb / 1e9:.1f}"
        print(f"| {backend} | {t_f * 1e3:.3f} | {t_fb * 1e3:.3f} | {gbs} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dim", type=int, default=1536)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--states", type=lambda s: [int(x) for x in s.split(",")], default=[4, 8, 12, 16, 32, 64, 128])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument(
        "--chunks",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="CUDA: time the Triton scan at each of these chunk lengths (steps between stored states)",
    )
    p.add_argument(
        "--backends",
        type=lambda s: s.split(","),
        default=None,
        help="only these scan backends (triton, cpu, mamba_ssm); default every one that runs here",
    )
    p.add_argument("--conv-only", action="store_true", help="only the causal conv1d table")
    p.add_argument("--no-conv", action="store_true", help="skip the causal conv1d table")
    args = p.parse_args(argv)
    args.states = sorted(args.states, reverse=True)
    if not args.conv_only:
        bench(args)
    if not args.no_conv:
        bench_conv(args)


if __name__ == "__main__":
    main()
