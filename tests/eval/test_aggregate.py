"""Aggregation on fabricated run folders with known answers."""

import json
import math
import statistics

import pytest
from compressmamba.eval import aggregate as agg


def _write_run(root, recipe, seed, acc, final, time_s, mode="tolerance", initial=None, **extra):
    d = root / recipe / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(f"name: {recipe}\nreduction: {{mode: {mode}}}\n")
    (d / "metrics.jsonl").write_text(json.dumps({"step": 1, "kind": "train", "wall_time": 0.1}) + "\n")
    summary = {
        "recipe": recipe,
        "name": recipe,
        "seed": seed,
        "steps": 10,
        "initial_state_sizes": initial or [64] * len(final),
        "final_state_sizes": final,
        "test_accuracy": acc,
        "best_val_accuracy": acc,
        "train_time_s": time_s,
        "n_cuts": 0 if mode == "none" else 2,
        **extra,
    }
    (d / "summary.json").write_text(json.dumps(summary))
    return d


ACC = [0.91, 0.83, 0.97, 0.88, 0.95]  # top 3: 0.97, 0.95, 0.91
FINAL = [[10, 14], [9, 13], [12, 12], [11, 15], [8, 10]]


@pytest.fixture
def runs_dir(tmp_path):
    for s, (a, f) in enumerate(zip(ACC, FINAL)):
        _write_run(tmp_path, "t/compressed", s, a, f, time_s=50.0 + s)
    for s, a in enumerate([0.99, 0.98, 0.97]):
        _write_run(tmp_path, "t/baseline", s, a, [64, 64], time_s=[200.0, 210.0, 220.0][s], mode="none")
    return tmp_path


def _row(rows, name):
    return next(r for r in rows if r.group == name)


def test_top_k_mean_std_dims_speedup(runs_dir):
    runs, problems = agg.load_runs(runs_dir)
    assert problems == [] and len(runs) == 8
    rows, notes = agg.aggregate(runs, top_k=3, baseline="t/baseline")
    assert notes == []
    c = _row(rows, "t/compressed")
    assert c.n_runs == 5 and c.seeds == [0, 1, 2, 3, 4]
    assert c.top_k_mean == pytest.approx((0.97 + 0.95 + 0.91) / 3)
    assert c.mean == pytest.approx(sum(ACC) / 5)
    assert c.std == pytest.approx(statistics.stdev(ACC))
    per_run = [sum(f) / 2 for f in FINAL]
    assert c.dim_mean == pytest.approx(sum(per_run) / 5)
    assert c.dim_std == pytest.approx(statistics.stdev(per_run))
    assert c.dims_per_layer == pytest.approx([10.0, 12.8])
    assert c.cost_mean_s == pytest.approx(52.0)
    assert c.speedup == pytest.approx(210.0 / 52.0)
    assert c.compressed and not _row(rows, "t/baseline").compressed
    assert _row(rows, "t/baseline").speedup == pytest.approx(1.0)


def test_top_k_is_a_parameter_and_lower_is_better():
    assert agg.top_k_mean([3.0, 1.0, 2.0], 2) == pytest.approx(2.5)
    assert agg.top_k_mean([3.0, 1.0, 2.0], 2, higher_is_better=False) == pytest.approx(1.5)
    assert agg.top_k_mean([3.0], 3) == 3.0
    with pytest.raises(ValueError, match="k = 0"):
        agg.top_k_mean([1.0], 0)


def test_teacher_time_counts_in_the_cost(tmp_path):
    _write_run(tmp_path, "t/base", 0, 0.9, [64], time_s=100.0, mode="none")
    _write_run(tmp_path, "t/kd", 0, 0.8, [8], time_s=20.0, mode="none", teacher_train_time_s=100.0)
    rows, _ = agg.aggregate(agg.load_runs(tmp_path)[0], baseline="t/base")
    assert _row(rows, "t/kd").cost_mean_s == pytest.approx(120.0)
    assert _row(rows, "t/kd").speedup == pytest.approx(100.0 / 120.0)


def test_partial_and_missing_runs_are_reported(runs_dir):
    unfinished = runs_dir / "t/compressed" / "seed9"
    unfinished.mkdir()
    (unfinished / "metrics.jsonl").write_text("")
    broken = runs_dir / "t/baseline" / "seed7"
    broken.mkdir()
    (broken / "summary.json").write_text("{not json")
    runs, problems = agg.load_runs(runs_dir)
    assert len(runs) == 8 and len(problems) == 2
    assert any("seed9" in p and "no summary.json" in p for p in problems)
    assert any("seed7" in p and "unreadable" in p for p in problems)
    rows, notes = agg.aggregate(runs, top_k=6, baseline="nope")
    assert any("baseline group 'nope' not found" in n for n in notes)
    assert any("only 5 scored runs" in n for n in notes)
    assert all(r.speedup is None for r in rows)
    assert _row(rows, "t/compressed").top_k_mean == pytest.approx(sum(ACC) / 5)


def test_run_without_score_is_counted_not_scored(tmp_path):
    _write_run(tmp_path, "g", 0, 0.5, [4], time_s=1.0)
    _write_run(tmp_path, "g", 1, None, [6], time_s=3.0)
    rows, notes = agg.aggregate(agg.load_runs(tmp_path)[0], top_k=1)
    assert rows[0].n_runs == 2 and rows[0].mean == 0.5 and rows[0].dim_mean == 5.0
    assert any("1 of 2 runs have no test_accuracy" in n for n in notes)


def test_markdown_csv_plot_and_cli(runs_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert agg.main([str(runs_dir), "--baseline", "t/baseline", "--out", str(out)]) == 0
    md = (out / "table.md").read_text()
    assert "| t/compressed | 5 | 94.33 | 90.80 ± 5.59 |" in md
    assert "4.04×" in md
    lines = (out / "table.csv").read_text().splitlines()
    assert lines[0].startswith("recipe,runs,seeds,test_accuracy_top_k_mean")
    comp = next(line for line in lines if line.startswith("t/compressed"))
    assert math.isclose(float(comp.split(",")[3]), (0.97 + 0.95 + 0.91) / 3)
    assert (out / "accuracy_vs_state.png").stat().st_size > 1000
    assert "t/compressed" in capsys.readouterr().out


def test_cli_bad_input(tmp_path, capsys):
    assert agg.main([str(tmp_path / "missing")]) == 2
    assert "expected a directory" in capsys.readouterr().err
    assert agg.main([str(tmp_path)]) == 2
    assert "no finished run" in capsys.readouterr().err


def test_compressmamba_aggregate_subcommand(runs_dir, tmp_path, capsys):
    from compressmamba.cli import main

    assert (
        main(["aggregate", str(runs_dir), "--baseline", "t/baseline", "--out", str(tmp_path / "o"), "--no-plot"]) == 0
    )
    assert "| t/compressed | 5 | 94.33 |" in (tmp_path / "o" / "table.md").read_text()
    assert main(["aggregate", str(tmp_path / "nothing")]) == 2
