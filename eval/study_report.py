"""The study's statistics and report (``eval/mamba_study.py``): paired differences by seed, the
summary (``study.json``), its markdown tables (``study.md``), the variants table (``--collect``)
and the figure (``study.png``)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from compressmamba.eval.study_arms import ARMS, OTHERS
from compressmamba.eval.study_flops import equal_flops

# what a study compares: the result key, paired as ``paired(kind=...)``, and the tables' words
# (``what``, ``cell``, ``speed_cols``; a text study shows bits per byte beside perplexity)
METRICS = {
    "perplexity": {
        "key": "val_perplexity",
        "kind": "relative",
        "what": "validation perplexity / bits per byte",
        "cell": "ppl / bpb",
        "speed_cols": "mean ppl | mean bpb",
    },
    "accuracy": {
        "key": "val_accuracy",
        "kind": "points",
        "what": "validation answer accuracy",
        "cell": "acc",
        "speed_cols": "mean acc",
    },
}


# --- statistics --------------------------------------------------------------------------------
def paired(a: list[float], b: list[float], kind: str = "relative") -> dict:
    """Paired differences: ``relative`` (perplexity) ``100 (a_i / b_i - 1)`` in percent, ``a``
    better where lower; ``points`` (accuracy) ``100 (a_i - b_i)`` in points, ``a`` better where
    higher. Returns the mean, the 95 % t interval, the number of seeds where ``a`` is better
    (``wins``), and the two-sided paired t-test p-value."""
    from scipy import stats

    if len(a) != len(b) or not a:
        raise ValueError(f"paired samples need equal, non-zero lengths, got {len(a)} and {len(b)}")
    if kind not in ("relative", "points"):
        raise ValueError(f"kind = {kind!r}: expected 'relative' or 'points'")
    if kind == "relative":
        d = [100.0 * (x / y - 1.0) for x, y in zip(a, b)]
    else:
        d = [100.0 * (x - y) for x, y in zip(a, b)]
    n = len(d)
    mean = statistics.fmean(d)
    if n > 1:
        sd = statistics.stdev(d)
        half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
        p = float(stats.ttest_1samp(d, 0.0).pvalue) if sd > 0 else (0.0 if mean != 0 else 1.0)
    else:
        half, p = math.nan, math.nan
    return {
        "n": n,
        "diffs": d,
        "mean": mean,
        "low": mean - half,
        "high": mean + half,
        "wins": sum(x < 0 for x in d) if kind == "relative" else sum(x > 0 for x in d),
        "p": p,
    }


def study_metric(results: dict) -> str:
    """``accuracy`` when every run reports answer accuracy (a recall task), else ``perplexity``."""
    runs = [r for per in results.values() for r in per.values()]
    return "accuracy" if runs and all(r.get("val_accuracy") is not None for r in runs) else "perplexity"


def summarise(results: dict, label: str, recipe: dict, overrides: list[str]) -> dict:
    arms = [a for a in ARMS if a in results]
    seeds = sorted(set.intersection(*(set(results[a]) for a in arms)))
    metric = study_metric(results)
    key, kind = METRICS[metric]["key"], METRICS[metric]["kind"]
    comparisons = {}
    if "compressed" in arms:
        c = [results["compressed"][s][key] for s in seeds]
        for other in OTHERS:
            if other in arms:
                comparisons[other] = paired(c, [results[other][s][key] for s in seeds], kind)
    sizes = None  # what the per-layer sizes buy: trained directly at them vs at a uniform N, same total
    if {"direct", "uniform"} <= set(arms):
        sizes = paired(*([results[a][s][key] for s in seeds] for a in ("direct", "uniform")), kind)
    speed = {}
    for a in arms:
        rs = [results[a][s] for s in seeds]
        steps = [r["step_s"] for r in rs if r["step_s"]]
        one = [r["step_s_one"] for r in rs if r.get("step_s_one")]
        speed[a] = {
            "step_s_one": statistics.fmean(one) if one else None,
            "train_s_one": statistics.fmean(r["train_s_one"] for r in rs) if one else None,
            "step_s": statistics.fmean(steps) if steps else None,
            "train_time_s": statistics.fmean(r["train_time_s"] for r in rs),
            "total_state": statistics.fmean(r["total_state"] for r in rs),
            "n_params": _mean_or_none([r.get("n_params") for r in rs]),
            "val_perplexity": statistics.fmean(r["val_perplexity"] for r in rs),
            "val_bits_per_byte": _mean_or_none([r.get("val_bits_per_byte") for r in rs]),
            "train_flops": _mean_or_none([r.get("train_flops") for r in rs]),
            "steps": _mean_or_none([r.get("steps") for r in rs]),
        }
        if metric == "accuracy":
            speed[a]["val_accuracy"] = statistics.fmean(r["val_accuracy"] for r in rs)
    return {
        "label": label,
        "metric": metric,
        "recipe": recipe.get("name"),
        "overrides": overrides,
        "steps": recipe.get("train", {}).get("steps"),
        "seeds": seeds,
        "results": {a: {str(s): results[a][s] for s in seeds} for a in arms},
        "comparisons": comparisons,
        "direct_vs_uniform": sizes,
        # the same comparisons where both runs have spent the same FLOPs (study_flops.py)
        "equal_flops": equal_flops({a: {s: results[a][s] for s in seeds} for a in arms}, metric),
        "speed": speed,
    }


def _mean_or_none(xs: list) -> float | None:
    """The mean, or None when a run lacks the number (a cached result from before it was recorded)."""
    return None if any(x is None for x in xs) else statistics.fmean(xs)


# --- report ------------------------------------------------------------------------------------
def _bpb(x) -> str:
    return "-" if _missing(x) else f"{x:.4f}"


def _missing(x) -> bool:
    """NaN, or null as study.json stores it."""
    return x is None or math.isnan(x)


def _cell(r: dict, m: dict, sep: str = " / ") -> str:
    """A run's (or an arm's mean) score in the tables: accuracy, or perplexity and bits per byte."""
    if m["key"] == "val_accuracy":
        return f"{r['val_accuracy']:.4f}"
    return f"{r['val_perplexity']:.4f}{sep}{_bpb(r.get('val_bits_per_byte'))}"


def metric_of(study: dict) -> dict:
    """The study's metric (:data:`METRICS`); a study.json written before accuracy existed: perplexity."""
    return METRICS[study.get("metric", "perplexity")]


def _ci(c: dict, kind: str = "relative") -> str:
    unit = "%" if kind == "relative" else "pt"
    if _missing(c["low"]):
        return f"{c['mean']:+.2f} {unit} (one seed)"
    return f"{c['mean']:+.2f} {unit} [{c['low']:+.2f}, {c['high']:+.2f}]"


def markdown(study: dict) -> str:
    arms = list(study["results"])
    res = study["results"]
    m = metric_of(study)
    lines = [
        f"### {study['label']}: `{study['recipe']}` {' '.join(f'`{o}`' for o in study['overrides'])}".rstrip(),
        "",
        f"{len(study['seeds'])} seeds ({', '.join(map(str, study['seeds']))}), {study['steps']} steps; "
        f"{m['what']} on the whole validation split.",
        "",
        "| seed | compressed sizes | " + " | ".join(f"{a} {m['cell']}" for a in arms) + " |",
        "|---|---|" + "---|" * len(arms),
    ]
    for s in study["seeds"]:
        sizes = res["compressed"][str(s)]["sizes"] if "compressed" in res else "-"
        ppl = []
        for a in arms:
            r = res[a][str(s)]
            tag = f" (N={r['sizes'][0]})" if a == "uniform" else ""
            ppl.append(f"{_cell(r, m)}{tag}")
        lines.append(f"| {s} | {sizes} | " + " | ".join(ppl) + " |")
    if study["comparisons"]:
        lines += [
            "",
            f"| compressed vs | mean Δ {study.get('metric', 'perplexity')}, 95 % interval "
            "| seeds better | paired t p |",
            "|---|---|---|---|",
        ]
        rows = list(study["comparisons"].items())
        if study.get("direct_vs_uniform"):
            rows.append(("*direct vs uniform (the per-layer sizes)*", study["direct_vs_uniform"]))
        for name, c in rows:
            p = "-" if _missing(c["p"]) else f"{c['p']:.3f}"
            lines.append(f"| {name} | {_ci(c, m['kind'])} | {c['wins']} of {c['n']} | {p} |")
    lines += _equal_flops_table(study, m)
    lines += [
        "",
        "| arm | total state | parameters | steps | training FLOPs | step after the cuts (one process) "
        f"| training steps (one process) | step in its run | whole run in its worker | {m['speed_cols']} |",
        "|---|---|---|---|---|---|---|---|---|" + "---|" * (m["speed_cols"].count("|") + 1),
    ]

    def ms(x):
        return f"{1000 * x:.0f} ms" if x else "-"

    def sec(x):
        return f"{x:.0f} s" if x else "-"

    def params(x):
        return f"{x:,.0f}" if x else "-"

    for a, sp in study["speed"].items():
        lines.append(
            f"| {a} | {sp['total_state']:.1f} | {params(sp.get('n_params'))} | {params(sp.get('steps'))} "
            f"| {_flops(sp.get('train_flops'))} | {ms(sp.get('step_s_one'))} "
            f"| {sec(sp.get('train_s_one'))} "
            f"| {ms(sp['step_s'])} | {sec(sp['train_time_s'])} | {_cell(sp, m, ' | ')} |"
        )
    return "\n".join(lines) + "\n"


def _flops(x) -> str:
    return "-" if _missing(x) else f"{x:.3g}"


def _equal_flops_table(study: dict, m: dict) -> list[str]:
    """The comparisons at equal FLOPs (``study["equal_flops"]``; none in a study.json written
    before they existed)."""
    eq = study.get("equal_flops") or {}
    if not eq:
        return []
    lines = [
        "",
        f"At equal training FLOPs (each pair where both runs have spent the smaller of their two final "
        f"counts; validation rows of {m['what'].split(' /')[0]} during training, interpolated in log FLOPs):",
        "",
        "| compressed vs, at equal FLOPs | mean Δ, 95 % interval | seeds better | paired t p | at FLOPs (mean) |",
        "|---|---|---|---|---|",
    ]
    for name, c in eq.items():
        p = "-" if _missing(c["p"]) else f"{c['p']:.3f}"
        at = _flops(statistics.fmean(c["flops"]))
        lines.append(f"| {name} | {_ci(c, m['kind'])} | {c['wins']} of {c['n']} | {p} | {at} |")
    return lines


def _compressed_scores(study: dict) -> dict[str, float]:
    """seed -> the compressed arm's score (the study's metric)."""
    key = metric_of(study)["key"]
    return {seed: r[key] for seed, r in study["results"].get("compressed", {}).items()}


def _versus_first(study: dict, first: dict) -> str:
    """This variant's compressed arm against the first variant's, paired on the seeds both ran."""
    if study is first:
        return "(reference)"
    if study.get("metric", "perplexity") != first.get("metric", "perplexity") or study["recipe"] != first["recipe"]:
        return "- (another recipe or metric)"
    mine, theirs = _compressed_scores(study), _compressed_scores(first)
    seeds = sorted(set(mine) & set(theirs), key=int)
    if not seeds:
        return "- (no common seed)"
    c = paired([mine[s] for s in seeds], [theirs[s] for s in seeds], metric_of(study)["kind"])
    return f"{_ci(c, metric_of(study)['kind'])}, {c['wins']}/{c['n']}"


def collect(dirs: list[Path]) -> str:
    """One row per study folder: its variant's paired differences against each other arm, and its
    compressed arm against the first folder's compressed arm (same recipe, paired on the seeds
    both ran: e.g. ``balanced`` against ``output`` where the two share the seeds)."""
    studies = []
    for d in dirs:
        path = d / "study.json" if d.is_dir() else d
        if not path.is_file():
            raise FileNotFoundError(f"{d}: no study.json (run the study with --out/--label first)")
        try:
            st = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a study.json ({e})") from None
        missing = [
            k for k in ("label", "recipe", "overrides", "seeds", "results", "comparisons", "speed") if k not in st
        ]
        if missing:
            raise ValueError(
                f"{path}: not a study.json written by mamba_study (missing {missing}); give a study folder"
            )
        studies.append(st)
    first = studies[0]
    rows = [
        "| variant | overrides | seeds | mean total state | vs direct | vs direct_same_arch | vs uniform | vs full "
        f"| step vs full | compressed vs {first['label']}'s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for st in studies:
        comp, kind = st["comparisons"], metric_of(st)["kind"]
        cell = {o: (f"{_ci(comp[o], kind)}, {comp[o]['wins']}/{comp[o]['n']}" if o in comp else "-") for o in OTHERS}
        sp = st["speed"]
        ratio = "-"
        key = "step_s_one" if sp["compressed"].get("step_s_one") else "step_s"
        if "full" in sp and sp["full"].get(key) and sp["compressed"].get(key):
            ratio = f"{sp['full'][key] / sp['compressed'][key]:.2f}x faster"
        rows.append(
            f"| {st['label']} | {' '.join(st['overrides']) or '(recipe)'} | {len(st['seeds'])} | "
            f"{sp['compressed']['total_state']:.1f} | {cell['direct']} | {cell['direct_same_arch']} | "
            f"{cell['uniform']} | {cell['full']} | {ratio} | {_versus_first(st, first)} |"
        )
    return "\n".join(rows) + "\n"


def plot(study: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res, seeds, m = study["results"], study["seeds"], metric_of(study)
    arms = list(res)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for s in seeds:
        ax1.plot(arms, [res[a][str(s)][m["key"]] for a in arms], marker="o", alpha=0.7, label=f"seed {s}")
    ax1.set_ylabel(f"{m['what']} (whole split)")
    ax1.set_title("each seed across the arms")
    ax1.legend(fontsize=7)
    comp = study["comparisons"]
    for i, c in enumerate(comp.values()):
        ax2.scatter([i] * c["n"], c["diffs"], alpha=0.5)
        if not _missing(c["low"]):
            ax2.errorbar(
                [i + 0.15], [c["mean"]], yerr=[[c["mean"] - c["low"]], [c["high"] - c["mean"]]], fmt="ks", capsize=4
            )
    ax2.axhline(0, color="grey", lw=0.8)
    ax2.set_xticks(range(len(comp)), [f"vs {o}" for o in comp])
    if m["kind"] == "relative":
        ax2.set_ylabel("compressed perplexity difference (%)\n< 0: compressed better")
    else:
        ax2.set_ylabel("compressed accuracy difference (points)\n> 0: compressed better")
    ax2.set_title("paired by seed: mean and 95 % interval")
    fig.suptitle(f"{study['label']}: {study['recipe']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
