"""SSD (Mamba-2) scan benchmark: forward and forward+backward time against the state size N, per
backend, at a Mamba-2 layer shape (default mamba2-130m: d_model 768, expand 2 -> 1536 channels,
headdim 64 -> 24 heads, one group of B and C).

    python -m compressmamba.eval.bench_ssd                                # CUDA if present, else CPU
    python -m compressmamba.eval.bench_ssd --device cpu --batch 1 --seqlen 512
    python -m compressmamba.eval.bench_ssd --backends cpu,ref --seqlen 128     # against the time loop

Inputs are drawn as a Mamba-2 mixer feeds them (dt through softplus with a bias, D per head, a
SiLU(z) gate); the forward+backward differentiates every input. The CPU path runs blocks of
``--chunk-size`` steps (mamba2-130m's config uses 256); the Triton kernels their own block.
"""

from __future__ import annotations

import argparse
import time

import torch
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


def bench(args):
    """Rows (backend, N, fwd ms, fwd+bwd ms, note), printed as a markdown table."""
    dtype = DTYPES[args.dtype]
    h, p = args.d_inner // args.headdim, args.headdim
    rows = []
    for backend in args.backends:
        for n in args.states:
            inp = _inputs(args.batch, args.seqlen, h, p, args.groups, n, args.device, dtype)
            kw = dict(chunk_size=args.chunk_size, dt_softplus=True, backend=backend)
            fwd = lambda inp=inp, kw=kw: ssd_scan_fn(**inp, **kw)  # noqa: E731
            leaves = [v.requires_grad_() for v in inp.values()]

            def fwd_bwd(inp=inp, kw=kw, leaves=leaves):
                torch.autograd.grad(ssd_scan_fn(**inp, **kw).float().sum(), leaves)

            try:
                with torch.no_grad():
                    t_f = _time(fwd, args.device, args.reps)
                t_fb = _time(fwd_bwd, args.device, args.reps)
            except Exception as e:  # a backend that cannot run here
                rows.append((backend, n, None, None, f"{type(e).__name__}: {e}"[:60]))
                break
            rows.append((backend, n, t_f * 1e3, t_fb * 1e3, ""))
    print(
        f"SSD scan, batch {args.batch}, seqlen {args.seqlen}, {h} heads x headdim {p}, {args.groups} group(s), "
        f"chunk {args.chunk_size}, {args.dtype}, device {args.device}"
    )
    print(f"| backend | N | fwd ms | fwd+bwd ms | speed-up vs N={args.states[0]} (fwd+bwd) |")
    print("|---|---|---|---|---|")
    base = {r[0]: r[3] for r in rows if r[1] == args.states[0] and r[3]}
    for backend, n, tf, tfb, note in rows:
        if tf is None:
            print(f"| {backend} | {n} | — | — | {note} |")
            continue
        sp = f"{base[backend] / tfb:.2f}x" if backend in base else ""
        print(f"| {backend} | {n} | {tf:.2f} | {tfb:.2f} | {sp} |")
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
