"""One cut's calibration statistics against one training step: time and peak resident memory, each
case in a fresh subprocess (``resource.getrusage``), at a Mamba-2 (default: the 130M shape, d_model
768, 24 layers, N 128, head_dim 64, 1 group, random weights) or Mamba-1 shape on the CPU.

    python -m compressmamba.eval.bench_cut                                   # 130M Mamba-2, batch 4 x 256
    python -m compressmamba.eval.bench_cut --cases train,stats,reference --reference-layers 2
    python -m compressmamba.eval.bench_cut --family mamba --state 16         # Mamba-1 130M shape
    python -m compressmamba.eval.bench_cut --make-model m2_130m             # save the random model
    python -m compressmamba.eval.bench_cut --compress m2_130m --calib-batches 1 --stats reference

Cases: ``model`` (the model built, nothing run: the resident floor), ``forward`` (one no-grad
forward), ``train`` (forward, backward and an AdamW step), ``stats`` (one cut's statistics: every
layer's streamed sums over one batch and its ``--method`` energy), ``reference`` (the same through
reduction/reference.py, the path before issue 34). ``--reference-layers`` builds the reference
case with fewer layers (its cost is per layer; the table scales its time to the full depth, its
peak is one layer's transient on top of the smaller model). ``--compress FOLDER`` times
``compressmamba compress FOLDER --tau 0.05 --calib python_stdlib`` with the statistics of
``--stats`` (new or reference, the CLI otherwise unchanged).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

CASES = ("model", "forward", "train", "stats", "reference")


def _parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="mamba2", choices=["mamba", "mamba2"])
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--state", type=int, default=128)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--groups", type=int, default=1)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--method", default="output")
    p.add_argument("--cases", type=lambda s: s.split(","), default=list(CASES))
    p.add_argument("--reference-layers", type=int, default=None, help="layers of the reference case's model")
    p.add_argument("--make-model", metavar="FOLDER", help="save a random transformers Mamba2 of this shape")
    p.add_argument("--compress", metavar="FOLDER", help="time `compressmamba compress FOLDER` instead")
    p.add_argument("--calib-batches", type=int, default=8)
    p.add_argument("--stats", default="new", choices=["new", "reference"])
    p.add_argument("--case", help=argparse.SUPPRESS)  # the child's one case
    return p


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    """CPU seconds of this process (user + system): on a loaded machine a steadier measure than wall time."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@contextlib.contextmanager
def reference_stats():
    """Within: every layer's start_stats builds the reference sums (the layers import these names at call time)."""
    from compressmamba.reduction import mamba, reference, ssd

    saved = mamba.MambaStats, ssd.Mamba2Stats
    mamba.MambaStats, ssd.Mamba2Stats = reference.ReferenceMambaStats, reference.ReferenceMamba2Stats
    try:
        yield
    finally:
        mamba.MambaStats, ssd.Mamba2Stats = saved


def _build(a, layers):
    import torch

    torch.manual_seed(0)
    if a.family == "mamba2":
        from compressmamba.models import build_mamba2

        return build_mamba2(
            d_model=a.d_model,
            n_layers=layers,
            state_sizes=[a.state] * layers,
            vocab_size=a.vocab,
            head_dim=a.head_dim,
            n_groups=a.groups,
        )
    from compressmamba.models import build_mamba

    return build_mamba(d_model=a.d_model, n_layers=layers, state_sizes=[a.state] * layers, vocab_size=a.vocab)


def _run_case(a) -> dict:
    """In the child: build the model, run one case, report seconds and peak RSS."""
    import torch

    layers = a.reference_layers if a.case == "reference" and a.reference_layers else a.layers
    model = _build(a, layers)
    ids = torch.randint(0, a.vocab, (a.batch, a.seqlen), generator=torch.Generator().manual_seed(0))
    floor = _rss_mb()
    t0, c0 = time.perf_counter(), _cpu_s()
    if a.case == "forward":
        with torch.no_grad():
            model.eval()(input_ids=ids)
    elif a.case == "train":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        model.train()(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    elif a.case in ("stats", "reference"):
        with reference_stats() if a.case == "reference" else contextlib.nullcontext():
            _one_cut(model, ids, a.method)
    seconds, cpu = time.perf_counter() - t0, _cpu_s() - c0
    return {"case": a.case, "layers": layers, "seconds": seconds, "cpu_s": cpu, "floor_mb": floor, "peak_mb": _rss_mb()}


def _one_cut(model, ids, method: str) -> None:
    """One cut's statistics: every layer's sums over one batch, then its ``method`` energy."""
    import torch

    layers = model.ssm_layers()
    for layer in layers:
        layer.start_stats()
    with torch.no_grad():
        model.eval()(input_ids=ids)
    for layer in layers:
        layer.energy(layer.pop_stats(), method)


def _child(argv, extra) -> dict:
    cmd = [sys.executable, "-m", "compressmamba.eval.bench_cut", *argv, *extra]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{' '.join(extra)} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _make_model(a) -> None:
    import torch
    from transformers import Mamba2Config, Mamba2ForCausalLM

    torch.manual_seed(0)
    cfg = Mamba2Config(
        vocab_size=a.vocab,
        hidden_size=a.d_model,
        num_hidden_layers=a.layers,
        state_size=a.state,
        head_dim=a.head_dim,
        n_groups=a.groups,
        expand=2,
        num_heads=2 * a.d_model // a.head_dim,
    )
    Mamba2ForCausalLM(cfg).save_pretrained(a.make_model)
    print(f"saved {a.make_model}")


def _compress(a) -> None:
    """``compressmamba compress`` in a child; peak RSS of that child."""
    code = (
        "import contextlib, sys, json, resource, time\n"
        "from compressmamba.eval.bench_cut import reference_stats\n"
        "from compressmamba.cli import main\n"
        f"with reference_stats() if {a.stats == 'reference'} else contextlib.nullcontext():\n"
        "    t = time.perf_counter(); rc = main(sys.argv[1:]); s = time.perf_counter() - t\n"
        "r = resource.getrusage(resource.RUSAGE_SELF)\n"
        "print(json.dumps({'rc': rc, 'seconds': s, 'cpu_s': r.ru_utime + r.ru_stime, 'peak_mb': r.ru_maxrss / 1024}))\n"
    )
    with tempfile.TemporaryDirectory() as out:
        argv = [
            "compress",
            a.compress,
            "--tau",
            "0.05",
            "--calib",
            "python_stdlib",
            "--out",
            f"{out}/small",
            "--calib-batches",
            str(a.calib_batches),
        ]
        res = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"compress failed:\n{res.stderr[-3000:]}")
    lines = res.stdout.strip().splitlines()
    r = json.loads(lines[-1])
    sizes = [ln.split()[2] for ln in lines if ln.split()[:1] and ln.split()[0].isdigit()]
    print(
        f"compress {a.compress} --calib-batches {a.calib_batches}, statistics {a.stats}: "
        f"{r['seconds']:.1f} s wall, {r['cpu_s']:.1f} s CPU (whole process, load included), "
        f"peak RSS {r['peak_mb']:.0f} MB, new N per layer {','.join(sizes)}"
    )


def _table(a, rows) -> None:
    import torch

    print(
        f"{a.family}, d_model {a.d_model}, {a.layers} layers, N {a.state}, head_dim {a.head_dim}, "
        f"{a.groups} group(s), batch {a.batch} x {a.seqlen}, method {a.method}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs"
    )
    print("| case | layers run | wall s | CPU s | CPU s at full depth | peak RSS MB | peak above model MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        full = r["cpu_s"] * a.layers / r["layers"]
        print(
            f"| {r['case']} | {r['layers']} | {r['seconds']:.2f} | {r['cpu_s']:.2f} | {full:.2f} | "
            f"{r['peak_mb']:.0f} | {r['peak_mb'] - r['floor_mb']:.0f} |"
        )


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    a = _parser().parse_args(argv)
    if a.case:
        print(json.dumps(_run_case(a)))
        return
    if a.make_model:
        return _make_model(a)
    if a.compress:
        return _compress(a)
    bad = [c for c in a.cases if c not in CASES]
    if bad:
        raise SystemExit(f"--cases {','.join(bad)}: expected some of {','.join(CASES)}")
    _table(a, [_child(argv, ["--case", c]) for c in a.cases])


if __name__ == "__main__":
    main()
