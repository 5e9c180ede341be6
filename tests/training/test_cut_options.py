"""The recipe options that change how a run cuts (issue #15's variants): the warm-up before the
first attempt (reduction.start), a final target reached over the attempts (reduction.budget),
Adam moments across a cut (reduction.moments) and a learning-rate re-warm (reduction.rewarm_steps)."""

from pathlib import Path

import pytest
import torch

from compressmamba.training import Trainer, recipe_from_dict
from compressmamba.training.config import ReductionConfig
from compressmamba.training.metrics import read_metrics
from compressmamba.training.optim import OptimConfig, lr_factor, rewarm_factor
from compressmamba.training.schedule import attempt_steps, decide_layer, rule_rank, stepped_rank


def _recipe(tmp_path, steps=12, **red):
    return {
        "name": "lm-options",
        "seed": 3,
        "out_dir": str(tmp_path / "run"),
        "model": {"name": "mamba", "d_model": 16, "n_layers": 2, "state_size": 13},
        "data": {"name": "text_lm", "corpus": "python_stdlib", "max_bytes": 60_000, "seq_len": 32},
        "optim": {"lr": 3e-3, "schedule": "cosine", "warmup_frac": 0.1},
        "train": {
            "steps": steps,
            "batch_size": 4,
            "eval_every": 100,
            "eval_batches": 2,
            "log_every": 1,
            "progress": False,
        },
        "reduction": {"mode": "fixed", "fraction": 0.5, "attempts": [4], "calib_batches": 2, "plots": False, **red},
    }


def _rows(tmp_path, kind):
    return [r for r in read_metrics(Path(tmp_path / "run" / "metrics.jsonl")) if r["kind"] == kind]


def test_start_delays_the_first_attempt_and_keeps_the_window_end():
    cfg = ReductionConfig(mode="tolerance", window=0.2, start=0.05, n_attempts=3)
    assert attempt_steps(cfg, 1000) == [100, 150, 200]  # evenly spaced in (50, 200]
    assert attempt_steps(ReductionConfig(mode="tolerance", window=0.2, n_attempts=3), 1000) == [67, 133, 200]


def test_stepped_rank_walks_geometrically_to_the_target():
    assert [stepped_rank(64, 8, k, 3) for k in (1, 2, 3)] == [32, 16, 8]
    assert [stepped_rank(13, 13, k, 4) for k in (1, 2, 3, 4)] == [13] * 4
    path = [stepped_rank(50, 7, k, 5) for k in range(1, 6)]
    assert path == sorted(path, reverse=True) and path[-1] == 7 and path[0] < 50
    with pytest.raises(ValueError, match="target = 0"):
        stepped_rank(10, 0, 1, 2)
    with pytest.raises(ValueError, match="attempt = 3"):
        stepped_rank(10, 4, 3, 2)


def test_a_planned_rank_is_cut_to_even_inside_the_gate():
    g = torch.Generator().manual_seed(0)
    e = torch.rand(20, dtype=torch.float64, generator=g) + 0.1
    cfg = ReductionConfig(mode="tolerance", tau=0.0)
    assert decide_layer(e, cfg, g).new == 20  # the rule keeps all
    d = decide_layer(e, cfg, g, rank=19)  # 19 >= 0.95 * 20 would be gated under the rule
    assert d.new == 19 and sorted(d.keep.tolist()) == sorted(torch.topk(e, 19).indices.tolist())
    assert decide_layer(e, cfg, g, rank=25).new == 20


def test_rewarm_factor():
    assert rewarm_factor(10, None, 5) == 1.0 and rewarm_factor(10, 8, 0) == 1.0
    assert [rewarm_factor(s, 4, 3) for s in (3, 4, 5, 6, 7, 8)] == [1.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_rewarm_scales_the_learning_rate_after_each_cut(tmp_path):
    Trainer(recipe_from_dict(_recipe(tmp_path, rewarm_steps=3))).fit()
    lr = {row["step"]: row["lr"] for row in _rows(tmp_path, "train")}  # row at step s: the lr of step index s-1
    sched = {s: 3e-3 * lr_factor(s - 1, 12, OptimConfig(schedule="cosine", warmup_frac=0.1)) for s in lr}
    assert [c["step"] for c in _rows(tmp_path, "cut")] == [4]
    ratio = {s: lr[s] / sched[s] for s in lr}
    assert [round(ratio[s], 6) for s in (4, 5, 6, 7, 8, 12)] == [1.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    # the rest of the schedule is untouched: the same run without re-warm logs the same lr from step 8
    Trainer(recipe_from_dict(_recipe(tmp_path / "b"))).fit()
    lr_b = {row["step"]: row["lr"] for row in _rows(tmp_path / "b", "train")}
    assert all(lr_b[s] == pytest.approx(lr[s]) for s in (1, 2, 3, 4, 8, 9, 12))


class _OptimizerAtCut:
    def __init__(self):
        self.states = []

    def on_cut(self, trainer, report):
        self.states.append(len(trainer.optimizer.state))


@pytest.mark.parametrize("moments", ["slice", "reset"])
def test_moments_slice_or_reset_at_a_cut(tmp_path, moments):
    seen = _OptimizerAtCut()
    tr = Trainer(recipe_from_dict(_recipe(tmp_path, moments=moments)), callbacks=[seen])
    tr.fit()
    cut = _rows(tmp_path, "cut")[0]
    n_params = sum(1 for _ in tr.model.parameters())
    if moments == "slice":
        assert seen.states == [n_params] and cut["optimizer"]["sliced"] == 4
    else:
        assert seen.states == [0] and cut["optimizer"] == {"reset": n_params}
        # the per-parameter step restarted at the cut: 12 - 4 steps since
        assert all(int(s["step"]) == 8 for s in tr.optimizer.state.values())


def test_budget_final_sets_the_target_at_the_first_attempt_and_reaches_it(tmp_path):
    red = dict(mode="tolerance", tau=0.2, attempts=[3, 6, 9], budget="final")
    s = Trainer(recipe_from_dict(_recipe(tmp_path, **red))).fit()
    cuts = _rows(tmp_path, "cut")
    first = cuts[0]
    assert first["step"] == 3 and first["old_sizes"] == [13, 13]
    cfg = ReductionConfig(**red)
    targets = [rule_rank(torch.tensor(e, dtype=torch.float64), cfg) for e in first["energies"]]
    assert all(t < 13 for t in targets)
    paths = [[stepped_rank(13, t, k, 3) for k in (1, 2, 3)] for t in targets]
    assert first["new_sizes"] == [p[0] for p in paths]
    assert s["final_state_sizes"] == targets


class _Crash(Exception):
    pass


class _CrashAt:
    def __init__(self, step):
        self.step = step

    def on_cut(self, trainer, report):
        if report.step == self.step:
            raise _Crash


def test_budget_final_resumes_with_its_targets(tmp_path):
    red = dict(mode="tolerance", tau=0.2, attempts=[3, 6, 9], budget="final")
    ref = Trainer(recipe_from_dict(_recipe(tmp_path / "a", **red))).fit()["final_state_sizes"]
    with pytest.raises(_Crash):  # dies at the second cut: the last checkpoint is the first cut's
        Trainer(recipe_from_dict(_recipe(tmp_path, **red)), callbacks=[_CrashAt(6)]).fit()
    resumed = Trainer(recipe_from_dict(_recipe(tmp_path, **red)), resume=tmp_path / "run")
    assert resumed.step == 3 and resumed.state["target_sizes"] == ref
    assert resumed.fit()["final_state_sizes"] == ref


@pytest.mark.parametrize(
    "override, message",
    [
        ({"start": 0.3, "window": 0.2, "attempts": None}, r"reduction.start = 0.3.*\[0, reduction.window = 0.2\)"),
        ({"budget": "final"}, r"reduction.budget = 'final'.*mode 'fixed'"),
        ({"budget": "all"}, r"reduction.budget = 'all'.*per_attempt or final"),
        ({"moments": "zero"}, r"reduction.moments = 'zero'.*slice or reset"),
        ({"rewarm_steps": -1}, r"reduction.rewarm_steps = -1"),
    ],
)
def test_bad_cut_options_name_the_key(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        recipe_from_dict(_recipe(tmp_path, **override))
