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
* ``uniform``: trained from the start at one N for every layer with the same total state, what a
  user without our per-layer sizes would pick;
* ``full``: the recipe without cuts.

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
    python -m compressmamba.eval.mamba_study --collect runs/study/stdlib/*/   # one row per variant

Writes ``OUT/LABEL/study.md`` (the tables), ``study.json`` (every number) and ``study.png``.
The study's own defaults (``train.eval_every`` = ``train.steps``: no evaluations during training,
only the final one on the whole split; ``train.eval_batch_size`` 64) come before the overrides,
which win.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import math
import os
import signal
import statistics
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

ARMS = ("compressed", "direct", "direct_same_arch", "uniform", "full")
OTHERS = ("direct", "direct_same_arch", "uniform", "full")
SIZED = ("direct", "direct_same_arch", "uniform")  # the arms that take the compressed run's final sizes
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


# --- the arms ----------------------------------------------------------------------------------
def default_arms(raw: dict) -> list[str]:
    """Every arm but ``direct_same_arch``, which a ``balanced`` recipe adds (its cut changes the
    architecture; selection only shrinks it, so there ``direct`` is the same architecture)."""
    balanced = (raw.get("reduction") or {}).get("method") == "balanced"
    return [a for a in ARMS if a != "direct_same_arch" or balanced]


def arm_recipe(raw: dict, arm: str, seed: int, sizes: list[int] | None = None, bc_proj_in: list | None = None) -> dict:
    """The recipe mapping of one arm at one seed (``sizes``: the compressed run's final sizes;
    ``bc_proj_in``: its final model's state-projection widths, for ``direct_same_arch``)."""
    if arm not in ARMS:
        raise ValueError(f"arm = {arm!r}: expected one of {list(ARMS)}")
    r = copy.deepcopy(raw)
    r["seed"] = seed
    r.setdefault("train", {})["progress"] = False
    r["name"] = f"{raw.get('name', 'study')}/{arm}"
    if arm == "compressed":
        if (r.get("reduction") or {}).get("mode", "none") == "none":
            raise ValueError("the study's recipe must cut: reduction.mode is none (set tolerance, fixed or pragmatic)")
        return r
    r["reduction"] = {"mode": "none", "plots": False}
    if arm in SIZED:
        if not sizes:
            raise ValueError(f"arm {arm!r} needs the compressed run's final state sizes")
        r["model"]["state_size"] = uniform_size(sizes) if arm == "uniform" else list(sizes)
    if arm == "direct_same_arch":
        if bc_proj_in is None or len(bc_proj_in) != len(sizes):
            raise ValueError(
                f"arm 'direct_same_arch' needs the compressed model's bc_proj_in (one entry per layer), "
                f"got {bc_proj_in!r}"
            )
        r["model"]["bc_proj_in"] = list(bc_proj_in)
    return r


def uniform_size(sizes: list[int]) -> int:
    """One N for every layer with the total state of ``sizes`` (rounded to the nearest)."""
    return max(1, math.floor(sum(sizes) / len(sizes) + 0.5))


def run_key(recipe: dict) -> str:
    """What a run computes, as a short hash (the name and output folder do not count)."""
    r = {k: v for k, v in recipe.items() if k not in ("name", "out_dir")}
    r["train"] = {k: v for k, v in r.get("train", {}).items() if k not in ("progress", "log_every")}
    return hashlib.sha256(json.dumps(r, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_arm(recipe: dict, out_dir: str, threads: int | None = None) -> dict:
    """Train one arm (in this process), evaluate the final model on the whole validation split,
    and write ``result.json`` beside the run. Returns the result."""
    import torch
    from transformers.utils import logging as hf_logging

    from compressmamba.training import Trainer, recipe_from_dict
    from compressmamba.training.metrics import write_json

    hf_logging.disable_progress_bar()  # the final save_pretrained's shard bar, once per run
    if threads:
        torch.set_num_threads(threads)
    rec = recipe_from_dict({**recipe, "out_dir": out_dir})
    t0 = time.perf_counter()
    tr = Trainer(rec, overwrite=True)  # the study's cache (result.json) decided this arm runs again
    summary = tr.fit()
    wall = time.perf_counter() - t0
    bc = getattr(getattr(tr.model, "config", None), "bc_proj_in", None)
    val = tr.evaluate("val", whole=True)
    t = rec.train
    rows = [r for r in tr.metrics_rows("train") if r["step"] > t.steps // 2 and r.get("samples_per_s")]
    step_s = statistics.median(t.batch_size * t.grad_accum / r["samples_per_s"] for r in rows) if rows else None
    result = {
        "arm": recipe["name"].rsplit("/", 1)[-1],
        "seed": rec.seed,
        "key": run_key(recipe),
        "sizes": summary["final_state_sizes"],
        "bc_proj_in": list(bc) if bc else None,  # a balanced cut's state-projection widths per layer
        "total_state": sum(summary["final_state_sizes"]),
        "val_loss": val["loss"],
        "val_perplexity": val["perplexity"],
        "val_bits_per_byte": val.get("bits_per_byte"),
        "val_accuracy": val.get("accuracy"),  # a recall task's answer accuracy (None for text)
        "val_rows": len(tr.data.val),  # the whole split: every row evaluated
        "step_s": step_s,
        "train_time_s": summary["train_time_s"],
        "wall_s": wall,
        "threads": torch.get_num_threads(),
    }
    if not math.isfinite(result["val_loss"]):
        raise FloatingPointError(f"{out_dir}: the final validation loss is {val['loss']}; the run diverged")
    write_json(Path(out_dir) / "result.json", result)
    return result


def final_bc_proj_in(res: dict) -> list | None:
    """A run's final ``bc_proj_in`` (None: no layer projects B, C): recorded in its result, or, for
    a result cached before it was, read from the final model folder's config."""
    if "bc_proj_in" in res:
        return res["bc_proj_in"]
    path = Path(res["run_dir"]) / "model" / "config.json"
    bc = json.loads(path.read_text()).get("bc_proj_in") if path.is_file() else None
    return list(bc) if bc else None


def _cached(out_dir: Path, key: str) -> dict | None:
    path = out_dir / "result.json"
    if path.is_file():
        res = json.loads(path.read_text())
        if res.get("key") == key:
            return res
    return None


class _Runner:
    """Runs arms in this process (``workers`` 0) or in a pool of spawned one-thread workers."""

    def __init__(self, workers: int, threads: int):
        self.threads = threads
        self.pool = None
        if workers > 0:
            import multiprocessing as mp

            os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # read by the workers' torch at import
            self.pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))

    def submit(self, recipe: dict, out_dir: Path) -> Future:
        key = run_key(recipe)
        hit = _cached(out_dir, key)
        if hit is not None or self.pool is None:
            f: Future = Future()
            try:
                f.set_result(hit if hit is not None else run_arm(recipe, str(out_dir), self.threads))
            except Exception as e:  # noqa: BLE001 - handed to the caller like a pool's failure
                f.set_exception(e)
            return f
        return self.pool.submit(run_arm, recipe, str(out_dir), self.threads)

    def close(self, abort: bool = False):
        """Wait for the workers; with ``abort`` (an error, Ctrl-C, SIGTERM) drop the queued runs
        and stop the running ones, so that no worker outlives the study."""
        if self.pool is None:
            return
        if not abort:
            self.pool.shutdown()
            return
        import multiprocessing as mp

        self.pool.shutdown(wait=False, cancel_futures=True)
        children = mp.active_children()  # the pool's workers (spawned by this process)
        for c in children:
            c.terminate()
        for c in children:
            c.join(10)


def run_study(raw: dict, seeds: list[int], arms: list[str], out: Path, workers: int = 0, threads: int = 1) -> dict:
    """Every arm at every seed; returns {arm: {seed: result}}."""
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms:
        raise ValueError(f"--arms {arms}: expected a comma-separated subset of {list(ARMS)}")
    if set(SIZED) & set(arms) and "compressed" not in arms:
        raise ValueError(
            "arms direct, direct_same_arch and uniform need the compressed arm (their sizes are its final sizes)"
        )
    runs = out / "runs"
    from compressmamba.registry import build_data

    build_data(raw["data"], seed=seeds[0])  # the token store, once, before any run's clock starts
    runner = _Runner(workers, threads)
    futures: dict[tuple[str, int], Future] = {}
    dirs: dict[tuple[str, int], Path] = {}

    def submit(arm, seed, sizes=None, bc=None):
        rec = arm_recipe(raw, arm, seed, sizes, bc)
        dirs[arm, seed] = runs / f"{arm}-seed{seed}-{run_key(rec)}"
        futures[arm, seed] = runner.submit(rec, dirs[arm, seed])

    aborted = True
    try:
        for seed in seeds:  # interleaved: the long full runs start early, beside the compressed ones
            for arm in ("compressed", "full"):
                if arm in arms:
                    submit(arm, seed)
        results: dict[str, dict[int, dict]] = {a: {} for a in arms}
        todo = set(futures)
        while todo:
            done = [k for k in todo if futures[k].done()]
            if not done:
                time.sleep(0.2)
                continue
            for k in sorted(done):
                todo.discard(k)
                arm, seed = k
                res = {**futures[k].result(), "run_dir": str(dirs[k])}
                results[arm][seed] = res
                _progress(arm, seed, res)
                if arm == "compressed":
                    for dep in SIZED:
                        if dep in arms:
                            bc = final_bc_proj_in(res) if dep == "direct_same_arch" else None
                            if dep == "direct_same_arch" and bc is None:  # no layer was cut: direct's model
                                bc = [None] * len(res["sizes"])
                            submit(dep, seed, res["sizes"], bc)
                            todo.add((dep, seed))
        aborted = False
    finally:
        runner.close(abort=aborted)
    return results


def segments(run_dir: str | Path, steps: int) -> list[tuple[int, list[int]]]:
    """(number of steps, per-layer sizes) of each stretch of a run between its cuts (:func:`stretches`
    adds each stretch's state projections)."""
    from compressmamba.training.metrics import read_metrics

    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    cuts = sorted((r for r in rows if r.get("kind") == "cut"), key=lambda r: r["step"])
    sizes = cuts[0]["old_sizes"] if cuts else next(r["state_sizes"] for r in rows if "state_sizes" in r)
    out, start = [], 0
    for c in cuts:
        out.append((c["step"] - start, list(sizes)))
        start, sizes = c["step"], c["new_sizes"]
    out.append((steps - start, list(sizes)))
    return [(n, sz) for n, sz in out if n > 0]


def arch(sizes: list[int], bc_proj_in: list | None = None) -> tuple:
    """A model's architecture as the study times and counts it: (per-layer sizes, per-layer
    state-projection widths or None), hashable."""
    bc = tuple(bc_proj_in) if bc_proj_in and any(w is not None for w in bc_proj_in) else None
    return (tuple(sizes), bc)


def stretches(res: dict, steps: int, balanced: bool = False) -> list[tuple[int, tuple]]:
    """(number of steps, :func:`arch`) of each stretch of a run between its cuts. A ``balanced``
    cut gives a layer its state projection from the layer's initial width the first time it
    shrinks (models/mamba2.py ``truncate_``); any other run keeps its final ``bc_proj_in``."""
    plan = segments(res["run_dir"], steps)
    if not balanced:
        bc = final_bc_proj_in(res)
        return [(n, arch(sz, bc)) for n, sz in plan]
    first = plan[0][1]
    out, widths = [], [None] * len(first)
    for n, sz in plan:
        widths = [w if w is not None else (n0 if s < n0 else None) for w, s, n0 in zip(widths, sz, first)]
        out.append((n, arch(sz, widths)))
    return out


def _arch_model(raw: dict, a: tuple, info: dict):
    from compressmamba.registry import build_model

    sizes, bc = a
    model = dict(raw["model"], state_size=list(sizes))
    model.pop("bc_proj_in", None)
    if bc is not None:
        model["bc_proj_in"] = list(bc)
    return build_model(model, **info)


def n_params(model) -> int:
    """Trainable parameters, each shared tensor once (tied embeddings)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def add_params(results: dict, raw: dict) -> None:
    """``n_params``: the parameters of each run's final model (built again from its architecture)."""
    from compressmamba.registry import MODEL_INFO_KEYS, build_data

    data = build_data(raw["data"], seed=raw.get("seed", 0))
    info = {k: v for k, v in data.info.items() if k in MODEL_INFO_KEYS}
    counted: dict[tuple, int] = {}
    for per in results.values():
        for r in per.values():
            a = arch(r["sizes"], final_bc_proj_in(r))
            if a not in counted:
                counted[a] = n_params(_arch_model(raw, a, info))
            r["n_params"] = counted[a]


def time_sizes(
    raw: dict, size_sets: list, threads: int = 1, rounds: int = 3, steps: int = 4, warmup: int = 2
) -> dict[tuple, float]:
    """Seconds per training step (forward, backward, AdamW) of the recipe's model at each of
    ``size_sets`` (per-layer sizes, or :func:`arch` tuples when a layer projects B, C), all timed
    in this process, round-robin over ``rounds`` so that any drift in the machine's load falls on
    every size alike; the median of the ``rounds * steps`` steps. Keys: the tuple of sizes, or the
    :func:`arch` tuple as given."""
    import torch

    from compressmamba.registry import MODEL_INFO_KEYS, build_data
    from compressmamba.training.config import OptimConfig
    from compressmamba.training.optim import build_optimizer

    torch.set_num_threads(threads)
    data = build_data(raw["data"], seed=raw.get("seed", 0))
    info = {k: v for k, v in data.info.items() if k in MODEL_INFO_KEYS}
    t = raw.get("train", {})
    batch, seq = t.get("batch_size", 32), data.info["seq_len"]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, data.info["vocab_size"], (batch, seq + 1), generator=g)
    optim = OptimConfig(lr=1e-4)
    setups = {}
    for key in {s if _is_arch(s) else tuple(s) for s in size_sets}:
        torch.manual_seed(0)
        model = _arch_model(raw, key if _is_arch(key) else (key, None), info)
        setups[key] = (model, build_optimizer(model, optim))
    times: dict[tuple, list[float]] = {k: [] for k in setups}

    def one(model, opt):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for r in range(rounds + 1):  # round 0 warms every model up
        for sizes, (model, opt) in setups.items():
            for _ in range(warmup if r == 0 else steps):
                t0 = time.perf_counter()
                one(model, opt)
                if r:
                    times[sizes].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _is_arch(x) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], tuple)


def add_timing(results: dict, raw: dict, threads: int = 1) -> None:
    """``step_s_one``: each arm's step time at its final architecture, and ``train_s_one``: its
    training steps' time (each stretch between cuts at its architecture), from one process
    (:func:`time_sizes`)."""
    steps = raw.get("train", {}).get("steps", 1000)
    balanced = (raw.get("reduction") or {}).get("method") == "balanced"
    plans = {
        (a, seed): stretches(r, steps, balanced=balanced and a == "compressed")
        for a, per in results.items()
        for seed, r in per.items()
    }
    timed = time_sizes(raw, [ar for plan in plans.values() for _, ar in plan], threads=threads)
    for (a, seed), plan in plans.items():
        r = results[a][seed]
        r["step_s_one"] = timed[plan[-1][1]]
        r["train_s_one"] = sum(n * timed[ar] for n, ar in plan)


def _progress(arm: str, seed: int, res: dict) -> None:
    acc = res.get("val_accuracy")
    score = f"val acc {acc:.4f}" if acc is not None else f"val ppl {res['val_perplexity']:.4f}"
    print(
        f"  {arm:>10} seed {seed}: sizes {res['sizes']}, {score}, {res['train_time_s']:.0f} s",
        file=sys.stderr,
        flush=True,
    )


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


def _metric(study: dict) -> dict:
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
    m = _metric(study)
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
    lines += [
        "",
        "| arm | total state | parameters | step after the cuts (one process) | training steps (one process) "
        f"| step in its run | whole run in its worker | {m['speed_cols']} |",
        "|---|---|---|---|---|---|---|" + "---|" * (m["speed_cols"].count("|") + 1),
    ]

    def ms(x):
        return f"{1000 * x:.0f} ms" if x else "-"

    def sec(x):
        return f"{x:.0f} s" if x else "-"

    def params(x):
        return f"{x:,.0f}" if x else "-"

    for a, sp in study["speed"].items():
        lines.append(
            f"| {a} | {sp['total_state']:.1f} | {params(sp.get('n_params'))} | {ms(sp.get('step_s_one'))} "
            f"| {sec(sp.get('train_s_one'))} "
            f"| {ms(sp['step_s'])} | {sec(sp['train_time_s'])} | {_cell(sp, m, ' | ')} |"
        )
    return "\n".join(lines) + "\n"


def collect(dirs: list[Path]) -> str:
    """One row per study folder: its variant's paired differences against each other arm."""
    rows = [
        "| variant | overrides | seeds | mean total state | vs direct | vs direct_same_arch | vs uniform | vs full "
        "| step vs full |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in dirs:
        path = d / "study.json" if d.is_dir() else d
        if not path.is_file():
            raise FileNotFoundError(f"{d}: no study.json (run the study with --out/--label first)")
        st = json.loads(path.read_text())
        comp, kind = st["comparisons"], _metric(st)["kind"]
        cell = {o: (f"{_ci(comp[o], kind)}, {comp[o]['wins']}/{comp[o]['n']}" if o in comp else "-") for o in OTHERS}
        sp = st["speed"]
        ratio = "-"
        key = "step_s_one" if sp["compressed"].get("step_s_one") else "step_s"
        if "full" in sp and sp["full"].get(key) and sp["compressed"].get(key):
            ratio = f"{sp['full'][key] / sp['compressed'][key]:.2f}x faster"
        rows.append(
            f"| {st['label']} | {' '.join(st['overrides']) or '(recipe)'} | {len(st['seeds'])} | "
            f"{sp['compressed']['total_state']:.1f} | {cell['direct']} | {cell['direct_same_arch']} | "
            f"{cell['uniform']} | {cell['full']} | {ratio} |"
        )
    return "\n".join(rows) + "\n"


def plot(study: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res, seeds, m = study["results"], study["seeds"], _metric(study)
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
        "--no-timing", action="store_true", help="skip timing every arm's sizes in one process after the runs"
    )
    p.add_argument("--collect", nargs="+", type=Path, metavar="DIR", help="tabulate finished studies and exit")
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
    seeds = parse_seeds(args.seeds)
    try:
        path = resolve_recipe(args.recipe)  # a file, or a shipped recipe's name
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None
    raw = read_recipe(path)  # its base: chain merged
    steps = apply_overrides(raw, args.overrides).get("train", {}).get("steps", 1000)
    defaults = [f"train.eval_every={steps}", "train.eval_batch_size=64"]
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
    print(text)
    print(f"written: {where}/study.md, study.json, study.png", file=sys.stderr)
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
