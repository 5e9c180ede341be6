"""The study's compute axis (``eval/mamba_study.py``): the compute-matched arms, each run's
validation curve against its cumulative training FLOPs (``train_flops``, compressmamba/flops.py),
the comparisons at equal FLOPs, and the figure of the curves.

A matched arm (``direct_matched``, ``direct_same_arch_matched``) is its base arm (``direct``,
``direct_same_arch``: the compressed run's final architecture, trained from the start) trained for
as many steps as it takes to spend the compressed run's FLOPs, its calibration passes included:
``ceil(F_compressed / F_step)``. The schedule keeps its shape, stretched: ``train.steps`` and, in
proportion, ``optim.warmup_steps`` and ``train.eval_every`` (``optim.warmup_frac`` and the cosine
decay to ``train.steps`` stretch by themselves).

At equal FLOPs: for each seed, the compressed run and the other arm are compared where both have
spent F* = the smaller of their two final counts; a curve evaluated between two of its validation
rows is interpolated linearly in log FLOPs (the loss, or the accuracy), and the arm that ends at
F* reads its last row. The rows are the runs' own validation evaluations during training (the
recipe's ``train.eval_batches``), not the whole-split evaluation of the final models.
"""

from __future__ import annotations

import copy
import math
import statistics
from pathlib import Path

MATCHED = {"direct_matched": "direct", "direct_same_arch_matched": "direct_same_arch"}


def matched_steps(target_flops: float, step_flops: float) -> int:
    """The fewest steps of ``step_flops`` each that spend at least ``target_flops``."""
    for name, v in (("target_flops", target_flops), ("step_flops", step_flops)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"matched_steps: {name} = {v!r}: expected a positive finite number of FLOPs")
    return math.ceil(target_flops / step_flops - 1e-9)  # an exact multiple is not one step more


def stretch(recipe: dict, steps: int) -> dict:
    """``recipe`` trained for ``steps`` with the same schedule shape: warm-up steps and the
    evaluation interval scaled by ``steps / train.steps`` (rounded, at least 1 where set)."""
    r = copy.deepcopy(recipe)
    t, o = r.setdefault("train", {}), r.setdefault("optim", {})
    old = int(t.get("steps", 1000))
    factor = steps / old
    t["steps"] = int(steps)
    if o.get("warmup_steps"):
        o["warmup_steps"] = max(1, round(o["warmup_steps"] * factor))
    if t.get("eval_every"):
        t["eval_every"] = max(1, round(t["eval_every"] * factor))
    return r


def data_facts(raw: dict) -> dict:
    """What counting a step needs from the data: the model builder's facts, and the length of
    one training sequence (``input_ids``/``inputs`` of the first training row)."""
    from compressmamba.registry import MODEL_INFO_KEYS, build_data

    data = build_data(raw["data"], seed=raw.get("seed", 0))
    row = data.train[0]
    first = row.get("input_ids", row.get("inputs"))
    info = {k: v for k, v in data.info.items() if k in MODEL_INFO_KEYS}
    return {"info": info, "length": int(first.shape[0])}


def step_flops(recipe: dict, facts: dict) -> float:
    """Training FLOPs of one optimizer step of ``recipe``'s model (``train.grad_accum``
    micro-batches of ``train.batch_size`` sequences), as the trainer counts them."""
    from compressmamba.flops import train_step_flops
    from compressmamba.registry import build_model

    t = recipe.get("train", {})
    model = build_model(recipe["model"], **facts["info"])
    return t.get("grad_accum", 1) * train_step_flops(model, t.get("batch_size", 32), facts["length"])


def matched_recipe(base: dict, arm: str, target_flops: float, facts: dict) -> tuple[dict, int]:
    """The matched arm ``arm`` from its base arm's recipe ``base``: renamed and stretched to spend
    ``target_flops``. Returns (recipe, steps)."""
    steps = matched_steps(target_flops, step_flops(base, facts))
    r = stretch(base, steps)
    r["name"] = base["name"].rsplit("/", 1)[0] + "/" + arm
    return r, steps


# --- curves ----------------------------------------------------------------------------------
def curve(run_dir: str | Path) -> list[dict]:
    """A run's validation rows in order: ``flops`` (cumulative training FLOPs), ``loss``,
    ``bits_per_byte``, ``accuracy`` (None where absent). Of rows at the same FLOPs (an
    evaluation right after a cut) the last one stands."""
    from compressmamba.training.metrics import read_metrics

    rows = [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r.get("kind") == "eval"]
    out: dict[float, dict] = {}
    for r in rows:
        if r.get("split") == "val" and r.get("train_flops"):
            out[r["train_flops"]] = {
                "flops": r["train_flops"],
                "step": r["step"],
                "loss": r["loss"],
                "bits_per_byte": r.get("bits_per_byte"),
                "accuracy": r.get("accuracy"),
            }
    return sorted(out.values(), key=lambda r: r["flops"])


def at_flops(points: list[dict], flops: float, key: str) -> float | None:
    """``key`` of the curve ``points`` at ``flops``, linear in log FLOPs between the two rows
    around it; None outside the curve's range (nothing is extrapolated)."""
    xs = [p["flops"] for p in points]
    if not points or flops < xs[0] * (1 - 1e-12) or flops > xs[-1] * (1 + 1e-12):
        return None
    for lo, hi in zip(points, points[1:]):
        if lo["flops"] <= flops <= hi["flops"]:
            w = (math.log(flops) - math.log(lo["flops"])) / (math.log(hi["flops"]) - math.log(lo["flops"]))
            return (1 - w) * lo[key] + w * hi[key]
    return points[0][key] if flops <= xs[0] else points[-1][key]


def equal_flops(results: dict, metric: str) -> dict:
    """For every other arm: the paired comparison with the compressed run, seed by seed, at the
    FLOPs both have spent (``F*``, see the module doc). Perplexity: ``exp(loss)`` of the curves,
    paired as relative differences; accuracy: paired in points."""
    from compressmamba.eval.study_report import paired

    key, kind = ("accuracy", "points") if metric == "accuracy" else ("loss", "relative")
    out = {}
    comp = results.get("compressed", {})
    for other, per in results.items():
        if other == "compressed":
            continue
        a, b, at = [], [], []
        for seed in sorted(set(comp) & set(per)):
            pc, po = comp[seed].get("curve"), per[seed].get("curve")
            if not pc or not po:
                continue
            f = min(pc[-1]["flops"], po[-1]["flops"])
            x, y = at_flops(pc, f, key), at_flops(po, f, key)
            if x is None or y is None:
                continue
            a.append(math.exp(x) if kind == "relative" else x)
            b.append(math.exp(y) if kind == "relative" else y)
            at.append(f)
        if a:
            out[other] = {**paired(a, b, kind), "flops": at}
    return out


def plot_curves(results: dict, path: Path, title: str, points: int = 40) -> None:
    """Validation bits per byte (or loss, or accuracy) against cumulative training FLOPs, one line
    per arm: the mean over seeds on a log-FLOPs grid where every seed has a row, and a band of
    one standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for per in results.values() for r in per.values() if r.get("curve")]
    key = "bits_per_byte" if runs and all(p["bits_per_byte"] is not None for r in runs for p in r["curve"]) else None
    key = key or ("accuracy" if runs and all(r.get("val_accuracy") is not None for r in runs) else "loss")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, per in results.items():
        curves = [r["curve"] for r in per.values() if r.get("curve")]
        if not curves:
            continue
        lo, hi = max(c[0]["flops"] for c in curves), min(c[-1]["flops"] for c in curves)
        if hi < lo:
            continue
        grid = [lo * (hi / lo) ** (i / (points - 1)) for i in range(points)] if hi > lo else [lo]
        ys = [[at_flops(c, f, key) for c in curves] for f in grid]
        mean = [statistics.fmean(y) for y in ys]
        sd = [statistics.stdev(y) if len(y) > 1 else 0.0 for y in ys]
        (line,) = ax.plot(grid, mean, label=f"{arm} ({len(curves)} seeds)")
        ax.fill_between(grid, [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)],
                        color=line.get_color(), alpha=0.2)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("cumulative training FLOPs (compressmamba/flops.py)")
    ax.set_ylabel({"bits_per_byte": "validation bits per byte", "loss": "validation loss"}.get(key, "val accuracy"))
    ax.set_title(f"{title}: mean and ±1 s.d. over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
