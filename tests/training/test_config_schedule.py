import pytest
import torch

from compressmamba.training.config import (
    ReductionConfig,
    apply_overrides,
    load_recipe,
    recipe_from_dict,
)
from compressmamba.training.optim import OptimConfig, lr_factor
from compressmamba.training.schedule import attempt_steps, decide_layer


def test_overrides_and_unknown_keys(tmp_path, toy_recipe):
    raw = apply_overrides(toy_recipe, ["reduction.tau=0.02", "train.steps=500", "model.state_size=[3, 4]"])
    r = recipe_from_dict(raw)
    assert r.reduction.tau == 0.02 and r.train.steps == 500 and r.model["state_size"] == [3, 4]
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['stpes'\].*valid keys: \['steps'"):
        recipe_from_dict(apply_overrides(toy_recipe, ["train.stpes=5"]))
    with pytest.raises(ValueError, match="unknown top-level"):
        recipe_from_dict({**toy_recipe, "trian": {}})
    with pytest.raises(ValueError, match=r"reduction.tau = 1.5"):
        recipe_from_dict(apply_overrides(toy_recipe, ["reduction.tau=1.5"]))
    with pytest.raises(FileNotFoundError):
        load_recipe(tmp_path / "nope.yaml")


def test_every_recipe_in_repo_parses():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "recipes"
    files = sorted(p for p in root.rglob("*.yaml") if p.parent.name != "accelerate")  # launch configs, no recipes
    assert files
    for f in files:
        load_recipe(f)


def test_attempt_steps_default_and_explicit():
    assert attempt_steps(ReductionConfig(mode="tolerance"), 1000) == [25, 50, 75, 100]
    assert attempt_steps(ReductionConfig(mode="tolerance", attempts=[7, 3]), 10) == [3, 7]
    assert attempt_steps(ReductionConfig(mode="none"), 1000) == []


def test_decide_layer_tau_rule_gate_and_selection():
    g = torch.Generator().manual_seed(0)
    e = torch.tensor([0.5, 8.0, 0.1, 1.0, 0.4], dtype=torch.float64)  # sorted: 8, 1, .5, .4, .1 (sum 10)
    d = decide_layer(e, ReductionConfig(mode="tolerance", tau=0.1), g)
    assert d.new == 2 and d.keep.tolist() == [1, 3] and abs(d.energy_kept - 0.9) < 1e-12
    # r = 4 ≥ 0.95 · 5 is false (4 < 4.75), so it cuts; tau 0.0 keeps all -> gate blocks
    assert decide_layer(e, ReductionConfig(mode="tolerance", tau=0.0), g).new == 5
    # gate: r = 19 of 20 is not < 0.95 · 20
    flat = torch.ones(20)
    assert decide_layer(flat, ReductionConfig(mode="tolerance", tau=0.05), g).new == 20
    assert decide_layer(flat, ReductionConfig(mode="fixed", fraction=0.1), g).new == 18
    sm = decide_layer(e, ReductionConfig(mode="tolerance", tau=0.1, selection="smallest"), g)
    assert sm.keep.tolist() == [2, 4]
    with pytest.raises(ValueError, match="NaN"):
        decide_layer(torch.tensor([1.0, float("nan")]), ReductionConfig(mode="tolerance"), g)
    one = decide_layer(torch.tensor([3.0]), ReductionConfig(mode="fixed", fraction=0.5), g)
    assert one.new == 1  # never empties a layer


def test_lr_schedule():
    c = OptimConfig(lr=1.0, schedule="cosine", warmup_frac=0.1)
    f = [lr_factor(s, 100, c) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert f[-1] < 0.01 and all(a >= b for a, b in zip(f[10:], f[11:]))
    assert lr_factor(50, 100, OptimConfig(schedule="constant")) == 1.0
