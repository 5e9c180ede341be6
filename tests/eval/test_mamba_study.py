"""eval/mamba_study.py: the arms, the paired statistics, the cache and the command line."""

import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from compressmamba.eval import mamba_study as ms
from compressmamba.eval import study_arms

RECIPE = {
    "name": "lm/study-tiny",
    "seed": 0,
    "model": {"name": "mamba", "d_model": 16, "n_layers": 2, "state_size": 12},
    "data": {"name": "text_lm", "corpus": "python_stdlib", "seq_len": 32, "max_bytes": 80_000},
    "optim": {"lr": 3e-3, "schedule": "cosine", "warmup_frac": 0.1},
    "train": {"steps": 10, "batch_size": 4, "eval_every": 10, "eval_batches": 2, "log_every": 2},
    "reduction": {"mode": "tolerance", "tau": 0.1, "attempts": [3, 6], "calib_batches": 2, "plots": False},
}


def test_paired_matches_a_float64_t_interval():
    rng = random.Random(7)
    a = [rng.uniform(3.0, 4.0) for _ in range(6)]
    b = [x * rng.uniform(0.97, 1.04) for x in a]
    res = ms.paired(a, b)
    d = 100 * (np.array(a, dtype=np.float64) / np.array(b, dtype=np.float64) - 1)
    from scipy import stats

    half = stats.t.ppf(0.975, 5) * d.std(ddof=1) / math.sqrt(6)
    assert res["mean"] == pytest.approx(d.mean(), rel=1e-12)
    assert res["low"] == pytest.approx(d.mean() - half, rel=1e-12)
    assert res["high"] == pytest.approx(d.mean() + half, rel=1e-12)
    assert res["wins"] == int((d < 0).sum()) and res["n"] == 6
    t = d.mean() / (d.std(ddof=1) / math.sqrt(6))
    assert res["p"] == pytest.approx(2 * stats.t.sf(abs(t), 5), rel=1e-9)
    one = ms.paired([2.0], [4.0])
    assert one["mean"] == pytest.approx(-50.0) and math.isnan(one["low"])
    with pytest.raises(ValueError, match="equal, non-zero lengths"):
        ms.paired([1.0, 2.0], [1.0])


def test_paired_points_for_accuracy():
    a, b = [0.61, 0.55, 0.70, 0.40], [0.50, 0.57, 0.52, 0.31]
    res = ms.paired(a, b, kind="points")
    d = 100 * (np.array(a, dtype=np.float64) - np.array(b, dtype=np.float64))
    from scipy import stats

    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / math.sqrt(4)
    assert res["diffs"] == pytest.approx(list(d), rel=1e-12) and res["mean"] == pytest.approx(d.mean(), rel=1e-12)
    assert res["low"] == pytest.approx(d.mean() - half, rel=1e-12)
    assert res["wins"] == 3  # higher accuracy is better
    with pytest.raises(ValueError, match="kind"):
        ms.paired(a, b, kind="ratio")


MQAR = {
    "name": "mqar/study-tiny",
    "seed": 0,
    "model": {"name": "mamba2", "d_model": 16, "n_layers": 2, "state_size": 12, "head_dim": 8, "chunk_size": 16},
    "data": {"name": "mqar", "vocab_size": 24, "n_pairs": 4, "seq_len": 20, "n_train": 64, "n_val": 40},
    "optim": {"lr": 3e-3},
    "train": {"steps": 6, "batch_size": 8, "eval_every": 6, "eval_batches": 1, "log_every": 2},
    "reduction": {"mode": "fixed", "fraction": 0.5, "attempts": [3], "calib_batches": 1, "plots": False},
}


def test_study_of_a_recall_task_pairs_answer_accuracy(tmp_path):
    res = ms.run_study(MQAR, [0, 1], ["compressed", "direct", "full"], tmp_path)
    for per in res.values():
        for r in per.values():
            assert 0 <= r["val_accuracy"] <= 1 and r["val_rows"] == 40
    study = ms.summarise(res, "base", MQAR, [])
    assert study["metric"] == "accuracy"
    c = [res["compressed"][s]["val_accuracy"] for s in (0, 1)]
    f = [res["full"][s]["val_accuracy"] for s in (0, 1)]
    assert study["comparisons"]["full"]["diffs"] == pytest.approx([100 * (x - y) for x, y in zip(c, f)])
    text = ms.markdown(study)
    assert "answer accuracy" in text and "full acc" in text and " pt" in text and "mean acc" in text
    assert "mean Δ accuracy" in text
    path = tmp_path / "base" / "study.json"
    path.parent.mkdir()
    path.write_text(json.dumps(study))
    assert " pt " in ms.collect([path.parent])
    ms.plot(study, tmp_path / "study.png")
    text_study = {**study, "metric": None}
    del text_study["metric"]  # a study.json written before the metric was recorded: perplexity
    assert ms.metric_of(text_study)["key"] == "val_perplexity"


def test_arm_recipes():
    c = ms.arm_recipe(RECIPE, "compressed", 3)
    assert c["seed"] == 3 and c["reduction"] == RECIPE["reduction"] and c["name"] == "lm/study-tiny/compressed"
    d = ms.arm_recipe(RECIPE, "direct", 3, [7, 4])
    assert d["model"]["state_size"] == [7, 4] and d["reduction"]["mode"] == "none"
    u = ms.arm_recipe(RECIPE, "uniform", 3, [7, 4])
    assert u["model"]["state_size"] == 6  # 11 states over 2 layers: 5.5 -> 6
    f = ms.arm_recipe(RECIPE, "full", 3)
    assert f["model"]["state_size"] == 12 and f["reduction"]["mode"] == "none"
    assert RECIPE["model"]["state_size"] == 12  # the input is not modified
    # the full arm does not depend on the reduction schedule: variants share it
    other = {**RECIPE, "reduction": {**RECIPE["reduction"], "tau": 0.3}}
    assert ms.run_key(ms.arm_recipe(other, "full", 3)) == ms.run_key(f)
    assert ms.run_key(ms.arm_recipe(other, "compressed", 3)) != ms.run_key(c)
    with pytest.raises(ValueError, match="reduction.mode is none"):
        ms.arm_recipe({**RECIPE, "reduction": {"mode": "none"}}, "compressed", 0)
    with pytest.raises(ValueError, match="needs the compressed run's final state sizes"):
        ms.arm_recipe(RECIPE, "uniform", 0)
    with pytest.raises(ValueError, match="arm = 'small'"):
        ms.arm_recipe(RECIPE, "small", 0)
    # direct_same_arch: the cut model's architecture (sizes and state projections) from the start
    bal = {**MQAR, "reduction": {**MQAR["reduction"], "method": "balanced"}}
    a = ms.arm_recipe(bal, "direct_same_arch", 3, [6, 12], [12, None])
    assert a["model"]["state_size"] == [6, 12] and a["model"]["bc_proj_in"] == [12, None]
    assert a["reduction"]["mode"] == "none" and "bc_proj_in" not in bal["model"]
    assert ms.run_key(a) != ms.run_key(ms.arm_recipe(bal, "direct", 3, [6, 12]))
    with pytest.raises(ValueError, match="needs the compressed model's bc_proj_in"):
        ms.arm_recipe(bal, "direct_same_arch", 3, [6, 12])
    assert ms.default_arms(RECIPE) == ["compressed", "direct", "direct_matched", "uniform", "full"]
    assert ms.default_arms(bal) == list(ms.ARMS)


def test_parse_seeds():
    assert ms.parse_seeds("0-4") == [0, 1, 2, 3, 4] and ms.parse_seeds("3,1") == [3, 1]
    assert ms.parse_seeds("0-1,5") == [0, 1, 5]
    for bad in ("a", "1,1", "-1", ""):
        with pytest.raises(ValueError, match="--seeds"):
            ms.parse_seeds(bad)


@pytest.mark.slow  # trains 8 small runs end to end
def test_study_pairs_the_arms_by_seed_and_caches_runs(tmp_path, monkeypatch):
    arms = ms.default_arms(RECIPE)
    res = ms.run_study(RECIPE, [0, 1], arms, tmp_path)
    assert set(res) == set(arms) and all(set(r) == {0, 1} for r in res.values())
    for s in (0, 1):
        sizes = res["compressed"][s]["sizes"]
        assert max(sizes) < 12 and res["direct"][s]["sizes"] == sizes
        assert res["uniform"][s]["sizes"] == [ms.uniform_size(sizes)] * 2 and res["full"][s]["sizes"] == [12, 12]
        for arm in arms:
            r = res[arm][s]
            assert r["seed"] == s and r["arm"] == arm and math.isfinite(r["val_perplexity"]) and r["step_s"] > 0
            assert r["val_perplexity"] == pytest.approx(math.exp(r["val_loss"]))
            assert r["val_bits_per_byte"] == pytest.approx(r["val_loss"] / math.log(2))  # byte tokenizer
    # the whole validation split: more batches than the recipe's eval_batches, and a different loss
    assert res["full"][0]["val_rows"] > RECIPE["train"]["eval_batches"] * RECIPE["train"]["batch_size"]
    summary = json.loads((tmp_path / "runs").glob("full-seed0-*/summary.json").__next__().read_text())
    assert summary["best_val_loss"] != res["full"][0]["val_loss"]
    # seeds differ: the runs are not one run repeated
    assert res["full"][0]["val_loss"] != res["full"][1]["val_loss"]
    plan = ms.segments(res["compressed"][0]["run_dir"], 10)
    assert sum(n for n, _ in plan) == 10 and plan[0][1] == [12, 12] and plan[-1][1] == res["compressed"][0]["sizes"]
    assert ms.segments(res["full"][0]["run_dir"], 10) == [(10, [12, 12])]
    timed = ms.time_sizes(RECIPE, [sz for _, sz in plan], rounds=1, steps=1, warmup=1)
    assert set(timed) == {tuple(sz) for _, sz in plan} and all(v > 0 for v in timed.values())
    ms.add_timing(res, RECIPE)
    for arm in arms:
        assert res[arm][1]["step_s_one"] > 0 and res[arm][1]["train_s_one"] > 0
    study = ms.summarise(res, "base", RECIPE, [])
    assert study["speed"]["full"]["step_s_one"] > 0
    c = [res["compressed"][s]["val_perplexity"] for s in (0, 1)]
    d = [res["direct"][s]["val_perplexity"] for s in (0, 1)]
    assert study["comparisons"]["direct"]["mean"] == pytest.approx(ms.paired(c, d)["mean"])
    u = [res["uniform"][s]["val_perplexity"] for s in (0, 1)]
    assert study["direct_vs_uniform"]["mean"] == pytest.approx(ms.paired(d, u)["mean"])
    text = ms.markdown(study)
    assert "| compressed vs |" in text and "| direct |" in text and "(N=" in text and "direct vs uniform" in text
    bpb = res["direct"][0]["val_bits_per_byte"]
    assert f"{res['direct'][0]['val_perplexity']:.4f} / {bpb:.4f}" in text and "| mean bpb |" in text

    def boom(*a, **k):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(study_arms, "run_arm", boom)  # the runner calls it there
    again = ms.run_study(RECIPE, [0, 1], arms, tmp_path)
    assert again["direct"][1] == {k: v for k, v in res["direct"][1].items() if not k.endswith("_one")}


def test_balanced_study_trains_direct_same_arch_with_the_cut_models_architecture(tmp_path):
    bal = {**MQAR, "reduction": {**MQAR["reduction"], "method": "balanced"}}
    arms = ms.default_arms(bal)
    res = ms.run_study(bal, [0], arms, tmp_path)
    c, d, same = (res[a][0] for a in ("compressed", "direct", "direct_same_arch"))
    assert c["sizes"] == [6, 6] and c["bc_proj_in"] == [12, 12]  # fraction 0.5 of 12, projected from 12
    assert same["sizes"] == c["sizes"] and same["bc_proj_in"] == c["bc_proj_in"] and d["bc_proj_in"] is None
    cfg = json.loads((Path(same["run_dir"]) / "model" / "config.json").read_text())
    assert cfg["bc_proj_in"] == [12, 12] and cfg["state_sizes"] == [6, 6]
    # a result cached before bc_proj_in was recorded: read from the final model's config
    assert ms.final_bc_proj_in({"run_dir": c["run_dir"]}) == [12, 12]
    ms.add_params(res, bal)
    assert same["n_params"] == c["n_params"] > d["n_params"]  # the same model, wider than direct
    # the balanced cut keeps the full model's B/C path and adds bc_proj: 2 layers x (B, C) x 6 x 12 more
    assert c["n_params"] == res["full"][0]["n_params"] + 2 * 2 * 6 * 12
    assert res["uniform"][0]["n_params"] == d["n_params"]
    # the compressed run is timed at 12 states before its cut and as the projected model after it
    plan = ms.stretches(c, 6, balanced=True)
    assert plan == [(3, ((12, 12), None)), (3, ((6, 6), (12, 12)))]
    assert ms.stretches(same, 6) == [(6, ((6, 6), (12, 12)))]
    ms.add_timing(res, bal)
    assert all(res[a][0]["step_s_one"] > 0 for a in arms)
    study = ms.summarise(res, "balanced", bal, [])
    assert set(study["comparisons"]) == set(ms.OTHERS)
    # the matched twin: the same architecture, trained on until it spent the compressed run's FLOPs
    matched = res["direct_same_arch_matched"][0]
    assert matched["bc_proj_in"] == c["bc_proj_in"] and matched["sizes"] == c["sizes"]
    assert matched["steps"] > same["steps"] and matched["train_flops"] >= c["train_flops"] > same["train_flops"]
    assert study["speed"]["direct_same_arch"]["n_params"] == c["n_params"]
    text = ms.markdown(study)
    assert "| direct_same_arch |" in text and "| parameters |" in text and f"{c['n_params']:,}" in text
    path = tmp_path / "balanced" / "study.json"
    path.parent.mkdir()
    path.write_text(json.dumps(study))
    assert "vs direct_same_arch" in ms.collect([path.parent])


def test_study_refuses_arms_it_cannot_pair(tmp_path):
    with pytest.raises(ValueError, match="need the compressed arm"):
        ms.run_study(RECIPE, [0], ["direct", "full"], tmp_path)
    with pytest.raises(ValueError, match="need the compressed arm"):
        ms.run_study(RECIPE, [0], ["direct_same_arch"], tmp_path)
    with pytest.raises(ValueError, match="--arms"):
        ms.run_study(RECIPE, [0], ["compressed", "tiny"], tmp_path)


@pytest.mark.slow
def test_command_line_with_two_workers_writes_the_tables_and_collects(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    out = tmp_path / "study"
    args = [str(path), "train.steps=8", "reduction.attempts=[4]", "--seeds", "0", "--workers", "2", "--out", str(out)]
    study = ms.main(args + ["--arms", "compressed,direct,full", "--label", "v1"])
    assert study["steps"] == 8 and study["overrides"] == ["train.steps=8", "reduction.attempts=[4]"]
    for f in ("study.md", "study.json", "study.png"):
        assert (out / "v1" / f).is_file()
    r = study["results"]["compressed"]["0"]
    assert r["threads"] == 1  # one torch thread per worker
    ms.main(args + ["reduction.tau=0.3", "--arms", "compressed,full", "--label", "v2"])
    capsys.readouterr()
    ms.main(["--collect", str(out / "v1"), str(out / "v2")])
    table = capsys.readouterr().out
    assert "| v1 |" in table and "| v2 |" in table and "reduction.tau=0.3" in table
    with pytest.raises(FileNotFoundError, match="no study.json"):
        ms.main(["--collect", str(tmp_path)])


def _workers_of(pid: int) -> list[int]:
    """The pids of ``pid``'s spawned multiprocessing workers (not its resource tracker)."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out = []
    for k in kids:
        try:
            cmd = Path(f"/proc/{k}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmd:
            out.append(int(k))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads worker pids from Linux /proc")
def test_sigterm_stops_the_workers_too(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "compressmamba.eval.mamba_study", str(path), "train.steps=100000"]
    cmd += ["reduction.attempts=[4]", "--seeds", "0", "--workers", "1", "--arms", "compressed", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("runs/*/metrics.jsonl")):  # the worker is training
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the study's worker never started training"
            time.sleep(0.2)
        workers = _workers_of(proc.pid)
        assert workers, "found no spawned worker"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        deadline = time.monotonic() + 20
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), "a worker outlived its study"
        assert rc == 128 + signal.SIGTERM  # exited through SystemExit, its cleanup run
    finally:
        for p in [proc.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize(
    "args,says",
    [
        (["--seeds", "4-x"], "--seeds '4-x'"),
        (["--arms", "compressed,bigger"], "'bigger'"),
        (["model.expand=abc"], "model.expand = 'abc'"),
        (["--curve-points", "0"], "--curve-points 0: expected at least 1"),
    ],
)
def test_the_study_says_a_bad_option_in_one_line(args, says, tmp_path, capsys):
    """Probe (issue 25): the study's own checks ended in tracebacks (python -m ... --seeds 4-x)."""
    assert ms.cli(["lm/stdlib_demo", *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("mamba_study: error:") and says in err, err


def _fake_study(label, recipe, scores: dict, metric="accuracy"):
    """A study.json with only what ``collect`` reads: compressed scores by seed, one comparison."""
    key = ms.METRICS[metric]["key"]
    return {
        "label": label,
        "recipe": recipe,
        "metric": metric,
        "overrides": [],
        "seeds": [int(s) for s in scores],
        "results": {"compressed": {s: {key: v} for s, v in scores.items()}},
        "comparisons": {"full": {"n": 2, "mean": -1.0, "low": -2.0, "high": 0.0, "wins": 0}},
        "speed": {"compressed": {"total_state": 12.0, "step_s": 0.1}},
    }


def test_collect_pairs_each_variant_s_compressed_arm_with_the_first_s(tmp_path):
    from scipy import stats

    rng = np.random.default_rng()
    a = {str(s): float(v) for s, v in enumerate(rng.uniform(0.1, 0.9, 4))}
    b = {str(s): float(v) for s, v in enumerate(rng.uniform(0.1, 0.9, 3), start=1)}  # seeds 1-3 only
    dirs = []
    for label, recipe, scores in (("first", "r", a), ("second", "r", b), ("other", "q", b)):
        d = tmp_path / label
        d.mkdir()
        (d / "study.json").write_text(json.dumps(_fake_study(label, recipe, scores)))
        dirs.append(d)
    rows = {line.split("|")[1].strip(): line for line in ms.collect(dirs).splitlines()[2:]}
    assert "compressed vs first's" in ms.collect(dirs).splitlines()[0]
    assert rows["first"].rstrip(" |").endswith("(reference)")
    d = 100 * (np.array([b[s] for s in "123"], dtype=np.float64) - np.array([a[s] for s in "123"]))
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    cell = rows["second"].split("|")[-2].strip()
    assert cell == f"{d.mean():+.2f} pt [{d.mean() - half:+.2f}, {d.mean() + half:+.2f}], {int((d > 0).sum())}/3"
    assert "another recipe" in rows["other"]
    (tmp_path / "bad.json").write_text('{"label": "x"}')
    with pytest.raises(ValueError, match="not a study.json written by mamba_study"):
        ms.collect([tmp_path / "bad.json"])
