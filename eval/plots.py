"""Plots of a finished (or running) run folder, redrawn from its metrics.jsonl.

The trainer draws the same figures while it runs (compressmamba/training/plots.py: the trainer
may not import eval/); this module redraws them afterwards, e.g. for a run trained with
``reduction.plots: false`` or on another machine:

    python -m compressmamba.eval.plots runs/lm/stdlib_demo/seed0 [--out DIR]

writes ``energy_step{S}.png`` for every cut row (each layer's energies sorted descending, the
states the cut kept in colour) and ``state_sizes.png`` (every layer's N against the step).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from compressmamba.training.metrics import read_metrics
from compressmamba.training.plots import plot_energy_spectra, plot_state_sizes

__all__ = ["plot_energy_spectra", "plot_state_sizes", "replot"]


def replot(run_dir, out_dir=None) -> list[Path]:
    """Redraw every cut's spectrum and the state-size plot of ``run_dir``; returns the PNG paths
    (in ``out_dir``, default ``run_dir/plots``)."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise ValueError(f"run_dir: {run_dir} has no metrics.jsonl; expected a compressmamba run folder")
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for row in read_metrics(metrics):
        if row.get("kind") != "cut":
            continue
        if not row.get("energies"):
            raise ValueError(f"run_dir: cut row at step {row.get('step')} has no 'energies' (older run format?)")
        paths.append(
            plot_energy_spectra(
                row["energies"],
                row["old_sizes"],
                row["new_sizes"],
                row["step"],
                out / f"energy_step{row['step']}.png",
                kept=row.get("kept"),
            )
        )
    paths.append(plot_state_sizes(metrics, out / "state_sizes.png"))
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="folder for the PNGs (default RUN_DIR/plots)")
    args = p.parse_args(argv)
    for path in replot(args.run_dir, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
