"""FSDP2 against DDP on two CPU ranks (gloo), at the same global batch, a cut included: training
steps per second, each rank's peak resident memory in steady state and across the cut
(docs/scale.md). Runs the one trainer on a Mamba-2 language model large enough for its training
state to show in the memory of a process (about 13 M parameters).

    python -m compressmamba.eval.bench_fsdp --steps 30 --out /tmp/bench_fsdp

Each arm is started as a user would start it: FSDP2 with ``accelerate launch --config_file
compressmamba/recipes/accelerate/fsdp2_cpu.yaml``, DDP with torchrun. The ranks run this file
with ``--worker``. Peak memory is ``ru_maxrss`` (the high-water mark of the resident set), read
before the cut (steady state: the steps and checkpoints before it) and after it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path


def recipe(out: Path, steps: int) -> dict:
    return {
        "name": "bench-fsdp",
        "seed": 0,
        "out_dir": str(out),
        "model": {"name": "mamba2", "d_model": 512, "n_layers": 8, "state_size": 64, "head_dim": 64},
        "data": {"name": "text_lm", "corpus": "python_stdlib", "max_bytes": 400_000, "seq_len": 64},
        "optim": {"lr": 1e-3},
        "train": {"steps": steps, "batch_size": 4, "eval_every": steps, "eval_batches": 1, "log_every": 1,
                  "progress": False},
        "reduction": {"mode": "fixed", "fraction": 0.5, "attempts": [steps // 2], "calib_batches": 1, "plots": False},
    }  # fmt: skip


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(out: Path, steps: int) -> None:
    from compressmamba.training import Trainer, recipe_from_dict

    tr = Trainer(recipe_from_dict(recipe(out / "run", steps)), overwrite=True)
    seen = {}
    cut = tr._cut

    def timed_cut():
        seen["before_cut_mb"] = _peak_mb()
        result = cut()
        seen["after_cut_mb"] = _peak_mb()
        return result

    tr._cut = timed_cut
    tr.fit()
    rows = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in rows if r.get("kind") == "train" and r["step"] > 2]
    row = {"rank": tr.accelerator.process_index, "parallelism": tr.parallelism, **seen, "end_mb": _peak_mb(),
           "samples_per_s": statistics.median(rates), "global_batch": 4 * tr.accelerator.num_processes}  # fmt: skip
    (out / f"rank{row['rank']}.json").write_text(json.dumps(row))


def run_arm(name: str, out: Path, steps: int) -> list[dict]:
    from compressmamba.recipe_index import RECIPES_DIR

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    me = [str(Path(__file__).resolve()), "--worker", "--out", str(out), "--steps", str(steps)]
    if name == "fsdp2":
        config = RECIPES_DIR / "accelerate" / "fsdp2_cpu.yaml"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), *me]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *me]
    out.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.exit(f"{name} failed:\n{res.stderr[-3000:]}")
    return [json.loads((out / f"rank{i}.json").read_text()) for i in (0, 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_fsdp"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.out, args.steps)
    from compressmamba.data.text import text_lm

    text_lm(corpus="python_stdlib", max_bytes=400_000, seq_len=64, seed=0)  # built once, before the ranks
    import accelerate
    import torch

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"machine: {machine}; torch {torch.__version__}, accelerate {accelerate.__version__}; "
          f"command: python -m compressmamba.eval.bench_fsdp --steps {args.steps}\n")  # fmt: skip
    print("| arm | samples/s (global batch 8) | peak RSS before the cut, MB (rank 0 / 1) | after the cut "
          "| at the end |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name in ("ddp", "fsdp2"):
        r = run_arm(name, args.out / name, args.steps)
        mb = [" / ".join(f"{x[k]:.0f}" for x in r) for k in ("before_cut_mb", "after_cut_mb", "end_mb")]
        print(f"| {name} | {r[0]['samples_per_s']:.1f} | " + " | ".join(mb) + " |")


if __name__ == "__main__":
    main()
