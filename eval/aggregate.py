"""Aggregate run folders into the paper's table format.

A run folder is what the trainer writes (``config.yaml``, ``metrics.jsonl``, ``summary.json``).
Runs are grouped by recipe name (``summary.json``'s ``recipe``); per group the table reports

- the mean of the top-k seeds (the paper: top 3 of 5) and the mean ± std over all seeds of the
  score (``test_accuracy`` by default; for perplexities lower is better and top-k takes the lowest),
- the final state size: mean ± std over seeds of each run's per-layer mean, and the per-layer means,
- the training cost (``train_time_s``, plus ``teacher_train_time_s`` where a distilled run records
  its teacher's) and the speed-up of the baseline group's mean cost over the group's mean cost.

std is the sample standard deviation (ddof = 1; 0 for a single run). Folders without a
``summary.json`` (unfinished runs) and groups with fewer than k runs are reported, never hidden.

CLI: ``python -m compressmamba.eval.aggregate RUNS_DIR --baseline NAME --out DIR [--top-k 3]``
writes ``table.md``, ``table.csv`` and ``accuracy_vs_state.png``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

LOWER_IS_BETTER = ("val_perplexity", "test_perplexity", "best_val_loss")


@dataclass
class Run:
    """One finished run: the fields of its summary.json that the table uses."""

    path: Path
    group: str
    seed: int | None
    summary: dict
    compressed: bool  # trained with a reduction schedule (not a directly-trained model)

    def score(self, metric: str) -> float | None:
        v = self.summary.get(metric)
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

    @property
    def final_sizes(self) -> list[int]:
        return list(self.summary.get("final_state_sizes") or [])

    @property
    def cost_s(self) -> float | None:
        """Wall time of the run, plus its teacher's when it was distilled from one."""
        t = self.summary.get("train_time_s")
        if t is None:
            return None
        return float(t) + float(self.summary.get("teacher_train_time_s") or 0.0)


@dataclass
class GroupRow:
    """One table row: a recipe aggregated over its seeds."""

    group: str
    n_runs: int
    seeds: list
    top_k: int
    top_k_mean: float | None
    mean: float | None
    std: float | None
    dim_mean: float | None
    dim_std: float | None
    dims_per_layer: list[float]
    initial_dims: list[int]
    cost_mean_s: float | None
    speedup: float | None
    compressed: bool
    notes: list[str] = field(default_factory=list)


def _sample_std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def top_k_mean(values: list[float], k: int, higher_is_better: bool = True) -> float:
    """Mean of the ``k`` best of ``values`` (all of them when fewer than ``k``)."""
    if k < 1:
        raise ValueError(f"k = {k!r}: expected an integer >= 1")
    if not values:
        raise ValueError("values is empty: expected at least one score")
    best = sorted(values, reverse=higher_is_better)[:k]
    return sum(best) / len(best)


def _is_compressed(summary: dict, config_text: str | None) -> bool:
    if summary.get("n_cuts"):
        return True
    if config_text is not None:
        import yaml

        cfg = yaml.safe_load(config_text) or {}
        return (cfg.get("reduction") or {}).get("mode", "none") != "none"
    return summary.get("initial_state_sizes") != summary.get("final_state_sizes")


def load_runs(runs_dir: str | Path) -> tuple[list[Run], list[str]]:
    """Find run folders under ``runs_dir`` (any depth). Returns the finished runs and one message
    per folder that could not be used (no summary.json, unreadable JSON, no recipe name)."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise ValueError(f"runs_dir = {str(root)!r}: expected a directory of run folders")
    runs, problems = [], []
    folders = {p.parent for p in root.rglob("metrics.jsonl")} | {p.parent for p in root.rglob("config.yaml")}
    folders |= {p.parent for p in root.rglob("summary.json")}
    for folder in sorted(folders):
        if folder.name == "checkpoints":
            continue
        s_path = folder / "summary.json"
        if not s_path.is_file():
            problems.append(f"{folder}: no summary.json (unfinished or crashed run); skipped")
            continue
        try:
            summary = json.loads(s_path.read_text())
        except (json.JSONDecodeError, OSError) as e:
            problems.append(f"{s_path}: unreadable ({e}); skipped")
            continue
        group = summary.get("recipe") or summary.get("name")
        if not group:
            problems.append(f"{s_path}: no 'recipe' name; skipped")
            continue
        cfg = folder / "config.yaml"
        runs.append(
            Run(
                folder,
                str(group),
                summary.get("seed"),
                summary,
                _is_compressed(summary, cfg.read_text() if cfg.is_file() else None),
            )
        )
    return runs, problems


def aggregate(
    runs: list[Run], metric: str = "test_accuracy", top_k: int = 3, baseline: str | None = None
) -> tuple[list[GroupRow], list[str]]:
    """Group ``runs`` by recipe and compute the table rows (sorted by group name) and notes."""
    if top_k < 1:
        raise ValueError(f"top_k = {top_k!r}: expected an integer >= 1")
    higher = metric not in LOWER_IS_BETTER
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.group, []).append(r)
    notes: list[str] = []
    if baseline is not None and baseline not in groups:
        notes.append(f"baseline group {baseline!r} not found among {sorted(groups)}; no speed-up column")
    base_cost = None
    if baseline in groups:
        costs = [r.cost_s for r in groups[baseline] if r.cost_s is not None]
        base_cost = sum(costs) / len(costs) if costs else None
    rows = []
    for name in sorted(groups):
        rows.append(_group_row(name, groups[name], metric, top_k, higher, base_cost))
        notes.extend(f"{name}: {n}" for n in rows[-1].notes)
    return rows, notes


def _group_row(name, runs, metric, top_k, higher, base_cost) -> GroupRow:
    notes = []
    scores = [s for s in (r.score(metric) for r in runs) if s is not None]
    if len(scores) < len(runs):
        notes.append(f"{len(runs) - len(scores)} of {len(runs)} runs have no {metric}")
    if scores and len(scores) < top_k:
        notes.append(f"only {len(scores)} scored runs; top-{top_k} mean uses all of them")
    dims = [sum(r.final_sizes) / len(r.final_sizes) for r in runs if r.final_sizes]
    per_layer = [r.final_sizes for r in runs if r.final_sizes]
    if len({len(p) for p in per_layer}) > 1:
        notes.append("runs differ in their number of layers; per-layer sizes not averaged")
        per_layer = []
    costs = [c for c in (r.cost_s for r in runs) if c is not None]
    cost = sum(costs) / len(costs) if costs else None
    return GroupRow(
        group=name,
        n_runs=len(runs),
        seeds=sorted((r.seed for r in runs), key=lambda s: (s is None, s)),
        top_k=top_k,
        top_k_mean=top_k_mean(scores, top_k, higher) if scores else None,
        mean=statistics.fmean(scores) if scores else None,
        std=_sample_std(scores) if scores else None,
        dim_mean=statistics.fmean(dims) if dims else None,
        dim_std=_sample_std(dims) if dims else None,
        dims_per_layer=[statistics.fmean(c) for c in zip(*per_layer)] if per_layer else [],
        initial_dims=list(runs[0].summary.get("initial_state_sizes") or []),
        cost_mean_s=cost,
        speedup=base_cost / cost if base_cost and cost else None,
        compressed=any(r.compressed for r in runs),
        notes=notes,
    )


def _f(v, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def _pct(metric: str) -> bool:
    return "accuracy" in metric


def to_markdown(rows: list[GroupRow], metric: str = "test_accuracy", baseline: str | None = None) -> str:
    """The table as GitHub markdown (accuracies in %)."""
    scale, unit = (100.0, " (%)") if _pct(metric) else (1.0, "")
    k = rows[0].top_k if rows else 3
    head = [
        "recipe",
        "runs",
        f"{metric} top-{k} mean{unit}",
        f"{metric} mean ± std{unit}",
        "final dim (mean ± std)",
        "final dim per layer",
        "train time (s)",
        f"speed-up vs {baseline}" if baseline else "speed-up",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        sc = lambda v: None if v is None else v * scale
        lines.append(
            "| "
            + " | ".join(
                [
                    r.group,
                    str(r.n_runs),
                    _f(sc(r.top_k_mean), ".2f"),
                    f"{_f(sc(r.mean), '.2f')} ± {_f(sc(r.std), '.2f')}",
                    f"{_f(r.dim_mean, '.1f')} ± {_f(r.dim_std, '.1f')}",
                    ", ".join(f"{d:.1f}" for d in r.dims_per_layer) or "—",
                    _f(r.cost_mean_s, ".0f"),
                    _f(r.speedup, ".2f") + ("×" if r.speedup is not None else ""),
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def to_csv(rows: list[GroupRow], metric: str = "test_accuracy") -> str:
    """The table as CSV (raw values, no percent scaling); per-layer sizes joined by ';'."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["recipe", "runs", "seeds", f"{metric}_top_k_mean", "top_k", f"{metric}_mean", f"{metric}_std"]
        + ["final_dim_mean", "final_dim_std", "final_dim_per_layer", "initial_dims", "train_time_s", "speedup"]
        + ["compressed"]
    )
    for r in rows:
        w.writerow(
            [r.group, r.n_runs, ";".join(map(str, r.seeds)), r.top_k_mean, r.top_k, r.mean, r.std]
            + [r.dim_mean, r.dim_std, ";".join(f"{d:g}" for d in r.dims_per_layer), ";".join(map(str, r.initial_dims))]
            + [r.cost_mean_s, r.speedup, r.compressed]
        )
    return buf.getvalue()


def plot_accuracy_vs_state(rows: list[GroupRow], path: str | Path, metric: str = "test_accuracy") -> Path:
    """Score against final state size (per-layer mean), error bars = std over seeds; compressed
    recipes as circles, directly-trained ones as squares."""
    from compressmamba.training.plots import plt, save_figure  # matplotlib (Agg) only when plotting

    scale = 100.0 if _pct(metric) else 1.0
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, marker, label in ((True, "o", "compressed in training"), (False, "s", "trained directly")):
        pts = [r for r in rows if r.compressed == kind and r.mean is not None and r.dim_mean is not None]
        if not pts:
            continue
        ax.errorbar(
            [r.dim_mean for r in pts],
            [r.mean * scale for r in pts],
            xerr=[r.dim_std for r in pts],
            yerr=[r.std * scale for r in pts],
            fmt=marker,
            capsize=3,
            label=label,
        )
        for r in pts:
            ax.annotate(
                r.group.split("/")[-1],
                (r.dim_mean, r.mean * scale),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
    ax.set_xlabel("final state size (mean over layers)")
    ax.set_ylabel(metric + (" (%)" if scale == 100 else ""))
    ax.legend()
    return save_figure(fig, path, dpi=120)


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="python -m compressmamba.eval.aggregate", description=__doc__.split("\n")[0])
    p.add_argument("runs_dir", help="folder holding run folders (any depth)")
    p.add_argument("--baseline", help="recipe name whose mean training time is the speed-up reference")
    p.add_argument("--out", help="write table.md, table.csv and accuracy_vs_state.png here")
    p.add_argument("--top-k", type=int, default=3, help="mean of the best k seeds (paper: 3 of 5)")
    p.add_argument("--metric", default="test_accuracy", help="summary.json field to score (default test_accuracy)")
    p.add_argument("--no-plot", action="store_true", help="skip the plot")
    return p


def register(sub) -> None:
    """Add the ``aggregate`` subcommand to the ``compressmamba`` command line."""
    a = sub.add_parser("aggregate", help="aggregate run folders into the paper's table (markdown, CSV, plot)")
    build_parser(a)
    a.set_defaults(func=run_cli)


def run_cli(args) -> int:
    runs, problems = load_runs(args.runs_dir)
    for msg in problems:
        print(f"aggregate: warning: {msg}", file=sys.stderr)
    if not runs:
        raise ValueError(f"runs_dir = {args.runs_dir!r}: no finished run (no summary.json) found")
    rows, notes = aggregate(runs, args.metric, args.top_k, args.baseline)
    for msg in notes:
        print(f"aggregate: note: {msg}", file=sys.stderr)
    md = to_markdown(rows, args.metric, args.baseline)
    print(md, end="")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(md)
        (out / "table.csv").write_text(to_csv(rows, args.metric))
        if not args.no_plot:
            plot_accuracy_vs_state(rows, out / "accuracy_vs_state.png", args.metric)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_cli(args)
    except ValueError as e:
        print(f"aggregate: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
