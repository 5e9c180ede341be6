"""The arms of the study (``eval/mamba_study.py``) and running them: each arm's recipe at one seed,
training it in this process or a pool of workers (cached under ``OUT/runs/`` by its recipe), and,
after the runs, each final model's parameters and its training steps timed in one process."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from compressmamba.eval.study_flops import MATCHED, curve, data_facts, matched_recipe

ARMS = ("compressed", "direct", "direct_same_arch", "direct_matched", "direct_same_arch_matched", "uniform", "full")
OTHERS = ARMS[1:]
# the arms that take the compressed run's final sizes (the matched ones also its FLOPs)
SIZED = ("direct", "direct_same_arch", "direct_matched", "direct_same_arch_matched", "uniform")
SAME_ARCH = ("direct_same_arch", "direct_same_arch_matched")  # the cut model's bc_proj_in too


# --- the arms ----------------------------------------------------------------------------------
def default_arms(raw: dict) -> list[str]:
    """Every arm but ``direct_same_arch`` and its matched twin, which a ``balanced`` recipe adds
    (its cut changes the architecture; selection only shrinks it, so there ``direct`` is the same
    architecture)."""
    balanced = (raw.get("reduction") or {}).get("method") == "balanced"
    return [a for a in ARMS if a not in SAME_ARCH or balanced]


def arm_recipe(
    raw: dict,
    arm: str,
    seed: int,
    sizes: list[int] | None = None,
    bc_proj_in: list | None = None,
    target_flops: float | None = None,
    facts: dict | None = None,
) -> dict:
    """The recipe mapping of one arm at one seed (``sizes``: the compressed run's final sizes;
    ``bc_proj_in``: its final model's state-projection widths, for the same-architecture arms;
    ``target_flops``: its ``train_flops``, and ``facts`` (study_flops.data_facts), for the
    matched arms)."""
    if arm not in ARMS:
        raise ValueError(f"arm = {arm!r}: expected one of {list(ARMS)}")
    if arm in MATCHED:
        if not target_flops or facts is None:
            raise ValueError(
                f"arm {arm!r} needs the compressed run's train_flops, got {target_flops!r} (a compressed "
                "result cached before train_flops was recorded: remove its folder under OUT/runs/ to train it again)"
            )
        base = arm_recipe(raw, MATCHED[arm], seed, sizes, bc_proj_in)
        return matched_recipe(base, arm, target_flops, facts)[0]
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
        "steps": summary["steps"],
        "train_flops": summary["train_flops"],
        "curve": curve(out_dir),  # validation rows against cumulative FLOPs (study_flops.py)
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
        raise ValueError(f"arms {', '.join(SIZED)} need the compressed arm (their sizes are its final sizes)")
    runs = out / "runs"
    from compressmamba.registry import build_data

    build_data(raw["data"], seed=seeds[0])  # the token store, once, before any run's clock starts
    facts = data_facts(raw) if set(MATCHED) & set(arms) else None
    runner = _Runner(workers, threads)
    futures: dict[tuple[str, int], Future] = {}
    dirs: dict[tuple[str, int], Path] = {}

    def submit(arm, seed, sizes=None, bc=None, flops=None):
        rec = arm_recipe(raw, arm, seed, sizes, bc, flops, facts)
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
                            bc = final_bc_proj_in(res) if dep in SAME_ARCH else None
                            if dep in SAME_ARCH and bc is None:  # no layer was cut: direct's model
                                bc = [None] * len(res["sizes"])
                            submit(dep, seed, res["sizes"], bc, res.get("train_flops"))
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
        (a, seed): stretches(r, r.get("steps", steps), balanced=balanced and a == "compressed")
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
