"""Does compressing a Mamba while it trains beat training it small? A paired, multi-seed study.

For one recipe (a Mamba or Mamba-2 language model with a ``reduction`` section) and every seed,
four arms train on the same data order (five for a Mamba-2 ``balanced`` recipe):

* ``compressed``: the recipe as given (it cuts during training);
* ``direct``: trained from the start at the compressed run's final per-layer sizes (same seed);
* ``direct_same_arch`` (added by default when ``reduction.method`` is ``balanced``): trained from
  the start with the cut model's architecture. A balanced cut keeps in_proj and conv1d at the
  old N and projects B_t, C_t down to r (``bc_proj``), so the cut model has a wider B/C path
  than ``direct``; this arm has the same (``model.bc_proj_in``, the scan at r), so a gain over
  ``direct`` that this arm shares is the width, not the cut;
* ``direct_matched`` and ``direct_same_arch_matched`` (with ``direct_same_arch``): those arms
  trained for as many steps as it takes to spend the compressed run's training FLOPs
  (``train_flops``, its calibration passes included), the schedule stretched (eval/study_flops.py);
* ``uniform``: trained from the start at one N for every layer with the same total state, what a
  user without our per-layer sizes would pick;
* ``full``: the recipe without cuts.

Each comparison is also made at equal FLOPs, on the runs' validation rows during training
(``--curve-points`` evaluations per run), interpolated in log FLOPs (eval/study_flops.py), and
``study_flops.png`` draws every arm's validation bits per byte against its cumulative FLOPs.

Every final model is evaluated on the whole validation split. Each comparison is paired by seed:
for a language model the relative difference of validation perplexity, ``ppl(compressed) /
ppl(other) - 1``; for a recall task (``data.name: mqar``, whose data reports answer accuracy) the
difference of answer accuracy in points, ``100 * (acc(compressed) - acc(other))``; with its mean,
a 95 % t interval over the seeds and how many seeds the compressed run wins. Time is
measured twice. Inside each run's worker: the whole run and its median step over the second half
(after every cut), which depend on what ran beside it. Then in one process after the runs: every
arm's final sizes, and each stretch of a compressed run between its cuts, timed round-robin
(forward, backward, AdamW on one batch), so the machine's load falls on every arm alike; a run's
"training steps" time is the sum over its stretches. Each run is cached under ``OUT/runs/`` by its recipe, so a
variant study reuses the arms it shares with another (``full`` does not depend on the schedule).

    python -m compressmamba.eval.mamba_study recipes/lm/stdlib_demo.yaml --seeds 0-4 --workers 2
    python -m compressmamba.eval.mamba_study recipes/lm/stdlib_demo.yaml reduction.start=0.1 \\
        --arms compressed,direct --label start0.1 --out runs/study/stdlib --seeds 0-4 --workers 2
    python -m compressmamba.eval.mamba_study --collect runs/study/stdlib/*/   # one row per variant; each
        # variant's compressed arm is also paired by seed with the first folder's

Writes ``OUT/LABEL/study.md`` (the tables), ``study.json`` (every number), ``study.png`` and
``study_flops.png``. The study's own defaults (``train.eval_every`` = ``train.steps`` /
``--curve-points``: that many evaluations on the recipe's ``train.eval_batches`` during training,
then the final one on the whole split; ``train.eval_batch_size`` 64) come before the overrides,
which win.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from pathlib import Path

# the arms and their runs live in study_arms.py; the statistics, tables and figure in
# study_report.py. This module is the command line (its docstring is --help), and re-exports both.
from compressmamba.eval.study_arms import (
    ARMS,
    OTHERS,
    SIZED,
    add_params,
    add_timing,
    arch,
    arm_recipe,
    default_arms,
    final_bc_proj_in,
    n_params,
    run_arm,
    run_key,
    run_study,
    segments,
    stretches,
    time_sizes,
    uniform_size,
)
from compressmamba.eval.study_flops import plot_curves
from compressmamba.eval.study_report import (
    METRICS,
    collect,
    markdown,
    metric_of,
    paired,
    plot,
    study_metric,
    summarise,
)

__all__ = [
    "ARMS",
    "METRICS",
    "OTHERS",
    "SIZED",
    "metric_of",
    "add_params",
    "add_timing",
    "arch",
    "arm_recipe",
    "cli",
    "collect",
    "default_arms",
    "final_bc_proj_in",
    "main",
    "markdown",
    "n_params",
    "paired",
    "parse_seeds",
    "plot",
    "plot_curves",
    "run_arm",
    "run_key",
    "run_study",
    "segments",
    "stretches",
    "study_metric",
    "summarise",
    "time_sizes",
    "uniform_size",
]


# --- command line ------------------------------------------------------------------------------
def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` or ``0-4`` (inclusive) or a mix: ``0-2,7`` (the rule ``compressmamba train --seeds`` uses)."""
    from compressmamba.training.config import parse_seeds as parse

    return parse(text)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", nargs="?", help="a recipe YAML (a language model with a reduction section)")
    p.add_argument("overrides", nargs="*", help="section.key=value, as for `compressmamba train`")
    p.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,1,2 (default 0-4)")
    p.add_argument(
        "--arms",
        default=None,
        help=f"a subset of {','.join(ARMS)} (default: all but direct_same_arch, which a balanced recipe adds)",
    )
    p.add_argument("--workers", type=int, default=0, help="parallel worker processes (0: run in this process)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--out", default=None, help="study folder (default runs/study/<recipe name>)")
    p.add_argument("--label", default="recipe", help="this variant's name: results go to OUT/LABEL/")
    p.add_argument(
        "--curve-points",
        type=int,
        default=6,
        help="validation evaluations per run during training, the points of the FLOPs curves (default 6)",
    )
    p.add_argument(
        "--no-timing", action="store_true", help="skip timing every arm's sizes in one process after the runs"
    )
    p.add_argument(
        "--collect",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="tabulate finished studies (each variant's compressed arm also paired by seed with the "
        "first DIR's) and exit",
    )
    return p


@contextlib.contextmanager
def _sigterm_exits():
    """Turn SIGTERM into SystemExit (exit status 143) inside the block, so that ``finally``
    clauses run; the previous handler is restored after. A no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv=None) -> dict | None:
    args = _parser().parse_intermixed_args(argv)  # options and overrides in any order
    if args.collect:
        print(collect(args.collect))
        return None
    if not args.recipe:
        raise SystemExit("give a recipe (or --collect DIR ...)")
    from compressmamba.recipe_index import resolve_recipe
    from compressmamba.training.config import apply_overrides, load_recipe, read_recipe

    if args.workers < 0 or args.threads < 1:
        raise SystemExit(f"--workers {args.workers} / --threads {args.threads}: expected >= 0 and >= 1")
    if args.curve_points < 1:
        raise ValueError(f"--curve-points {args.curve_points}: expected at least 1 evaluation per run")
    seeds = parse_seeds(args.seeds)
    try:
        path = resolve_recipe(args.recipe)  # a file, or a shipped recipe's name
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None
    raw = read_recipe(path)  # its base: chain merged
    steps = apply_overrides(raw, args.overrides).get("train", {}).get("steps", 1000)
    defaults = [f"train.eval_every={max(1, steps // args.curve_points)}", "train.eval_batch_size=64"]
    rec = load_recipe(path, defaults + list(args.overrides))  # validates; the name as train gives it
    raw = apply_overrides({**raw, "name": rec.name}, defaults + list(args.overrides))
    out = Path(args.out or f"runs/study/{rec.name}")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()] if args.arms else default_arms(raw)
    with _sigterm_exits():  # a killed study stops its workers too (run_study's cleanup runs)
        results = run_study(raw, seeds, arms, out, workers=args.workers, threads=args.threads)
    add_params(results, raw)
    if not args.no_timing:
        print("timing every arm's sizes in this process ...", file=sys.stderr, flush=True)
        add_timing(results, raw, threads=args.threads)
    study = summarise(results, args.label, raw, list(args.overrides))
    where = out / args.label
    where.mkdir(parents=True, exist_ok=True)
    from compressmamba.training.metrics import write_json

    write_json(where / "study.json", study)
    text = markdown(study)
    (where / "study.md").write_text(text)
    plot(study, where / "study.png")
    plot_curves(results, where / "study_flops.png", f"{args.label}: {rec.name}")
    print(text)
    print(f"written: {where}/study.md, study.json, study.png, study_flops.png", file=sys.stderr)
    return study


def cli(argv=None) -> int:
    """``python -m compressmamba.eval.mamba_study``: :func:`main`, with a bad option, recipe or
    override said in one line (exit 2) as ``compressmamba train`` says it, not as a traceback."""
    try:
        main(argv)
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as e:
        print(f"mamba_study: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
