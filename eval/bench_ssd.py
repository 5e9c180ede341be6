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

import argparse
import os
import time

import torch
from compressmamba.eval.bench_scan import copy_bandwidth

from compressmamba.kernels import ssd_scan_fn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, device, reps):
    """Best of ``reps`` timed calls after one warm-up (the minimum is robust to other load)."""
    fn()
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


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

            try:
                with torch.no_grad():
                    t_f = _time(fwd, args.device, args.reps)
                t_fb = _time(fwd_bwd, args.device, args.reps)
            except Exception as e:  # a backend that cannot run here
                rows.append((backend, n, None, None, None, None, f"{type(e).__name__}: {e}"[:60]))
                break
            b_f, b_fb = _min_bytes(args.batch, args.seqlen, h, p, args.groups, n, bpe)
            rows.append((backend, n, t_f * 1e3, t_fb * 1e3, b_f / t_f / 1e9, b_fb / t_fb / 1e9, ""))
    bw = None
    if args.device.startswith("cuda"):
        bw = copy_bandwidth(args.device)
    elif os.environ.get("TRITON_INTERPRET", "0") == "1":  # the dry run: same code path, tiny copy
        bw = copy_bandwidth(args.device, reps=1, mib=4)
    print(
        f"SSD scan, batch {args.batch}, seqlen {args.seqlen}, {h} heads x headdim {p}, {args.groups} group(s), "
        f"chunk {args.chunk_size} (triton: {args.chunk_size if args.chunk_size <= 128 else 'its default'}), "
        f"{args.dtype}, device {args.device}"
    )
    head = "| backend | N | fwd ms | fwd+bwd ms | fwd GB/s | fwd+bwd GB/s |" + (" fwd % of copy |" if bw else "")
    print(f"{head} speed-up vs N={args.states[0]} (fwd+bwd) |")
    print("|---|---|---|---|---|---|---|" + ("---|" if bw else ""))
    base = {r[0]: r[3] for r in rows if r[1] == args.states[0] and r[3]}
    for backend, n, tf, tfb, gf, gfb, note in rows:
        if tf is None:
            print(f"| {backend} | {n} | — | — | — | — |{' — |' if bw else ''} {note} |")
            continue
        sp = f"{base[backend] / tfb:.2f}x" if backend in base else ""
        share = f" {gf / bw:.0%} |" if bw else ""
        print(f"| {backend} | {n} | {tf:.2f} | {tfb:.2f} | {gf:.1f} | {gfb:.1f} |{share} {sp} |")
    if bw:
        print(f"\ndevice copy bandwidth: {bw:.0f} GB/s")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--backends", type=lambda s: s.split(","), default=None, help="default: triton,cpu on CUDA, else cpu"
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--d-inner", type=int, default=1536)
    p.add_argument("--headdim", type=int, default=64)
    p.add_argument("--groups", type=int, default=1)
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--states", type=lambda s: [int(x) for x in s.split(",")], default=[16, 32, 64, 128])
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    if args.d_inner % args.headdim:
        p.error(f"--d-inner {args.d_inner} is not a multiple of --headdim {args.headdim}")
    args.backends = args.backends or (["triton", "cpu"] if args.device.startswith("cuda") else ["cpu"])
    args.states = sorted(args.states, reverse=True)
    return bench(args)


if __name__ == "__main__":
    main()
