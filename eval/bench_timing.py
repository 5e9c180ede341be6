"""What the scan benchmarks share (bench_scan.py, bench_ssd.py, bench_mamba3.py; bench_model.py
times with it): dtypes by name, a best-of-reps timer that synchronises CUDA, the device's copy
bandwidth, the timing of one forward and one forward+backward, the markdown rows of a scan table,
and the head-structured scans' command line."""

from __future__ import annotations

import argparse
import os
import time

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_time(fn, device: str, reps: int) -> float:
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


def copy_bandwidth(device, reps=5, mib=1024) -> float:
    """GB/s of a ``mib`` MiB device-to-device copy (read + write): the practical bandwidth ceiling."""
    x = torch.randn(mib * 2**18, device=device, dtype=torch.float32)
    y = torch.empty_like(x)
    t = best_time(lambda: y.copy_(x), device, reps)
    return 2 * x.numel() * 4 / t / 1e9


def interpreting() -> bool:
    """Triton's interpreter runs the Triton kernels on CPU tensors (eval/gpu_session.sh --dry-run)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def reference_bandwidth(device: str) -> float | None:
    """The copy bandwidth a table compares with: measured on CUDA; in the dry run under Triton's
    interpreter, the same code path at a size a CPU copies at once; else None."""
    if device.startswith("cuda"):
        return copy_bandwidth(device)
    if interpreting():
        return copy_bandwidth(device, reps=1, mib=4)
    return None


def time_row(backend: str, n: int, fwd, fwd_bwd, device: str, reps: int, min_bytes: tuple[int, int]) -> tuple:
    """One table row (backend, N, fwd ms, fwd+bwd ms, fwd GB/s, fwd+bwd GB/s, note) against the
    bytes a fused scan must move at least (forward, forward+backward); a backend that cannot run
    here gives a row of None with the error as its note."""
    try:
        with torch.no_grad():
            t_f = best_time(fwd, device, reps)
        t_fb = best_time(fwd_bwd, device, reps)
    except Exception as e:  # a backend that cannot run here
        return (backend, n, None, None, None, None, f"{type(e).__name__}: {e}"[:60])
    b_f, b_fb = min_bytes
    return (backend, n, t_f * 1e3, t_fb * 1e3, b_f / t_f / 1e9, b_fb / t_fb / 1e9, "")


def print_table(rows: list[tuple], bw: float | None, first_n: int, speedup: str = "") -> None:
    """The markdown table of ``rows`` (see :func:`time_row`): with ``bw``, the forward's share of
    the copy bandwidth; the speed-up of each row's forward+backward over N = ``first_n``."""
    share_head = " fwd % of copy |" if bw else ""
    head = "| backend | N | fwd ms | fwd+bwd ms | fwd GB/s | fwd+bwd GB/s |"
    print(f"{head}{share_head} speed-up vs N={first_n}{speedup} |")
    print("|---|---|---|---|---|---|---|" + ("---|" if bw else ""))
    base = {r[0]: r[3] for r in rows if r[1] == first_n and r[3]}
    for backend, n, tf, tfb, gf, gfb, note in rows:
        if tf is None:
            print(f"| {backend} | {n} | — | — | — | — |{' — |' if bw else ''} {note} |")
            continue
        sp = f"{base[backend] / tfb:.2f}x" if backend in base else ""
        share = f" {gf / bw:.0%} |" if bw else ""
        print(f"| {backend} | {n} | {tf:.2f} | {tfb:.2f} | {gf:.1f} | {gfb:.1f} |{share} {sp} |")


def head_scan_args(argv, description: str, chunk_size: int, mimo: bool = False) -> argparse.Namespace:
    """The command line of a benchmark of a scan over heads (bench_ssd.py, bench_mamba3.py): the
    layer's shape, the state sizes to time (largest first), dtype, backends and repetitions."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--backends", type=lambda s: s.split(","), default=None, help="default: triton,cpu on CUDA, else cpu"
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--d-inner", type=int, default=1536)
    p.add_argument("--headdim", type=int, default=64)
    p.add_argument("--groups", type=int, default=1)
    if mimo:
        p.add_argument("--mimo-rank", type=int, default=1)
    p.add_argument("--chunk-size", type=int, default=chunk_size)
    p.add_argument("--states", type=lambda s: [int(x) for x in s.split(",")], default=[16, 32, 64, 128])
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    if args.d_inner % args.headdim:
        p.error(f"--d-inner {args.d_inner} is not a multiple of --headdim {args.headdim}")
    args.backends = args.backends or (["triton", "cpu"] if args.device.startswith("cuda") else ["cpu"])
    args.states = sorted(args.states, reverse=True)
    return args
