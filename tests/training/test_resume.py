"""Resume is faithful in every reduction mode, or says why not."""

import json
import re
from pathlib import Path

import pytest
import yaml

from compressmamba.registry import DATASETS, register_dataset
from compressmamba.training import Trainer, recipe_from_dict
from compressmamba.training.checkpoint import load_checkpoint
from compressmamba.training.config import apply_overrides
from compressmamba.training.metrics import read_metrics
from compressmamba.training.trainer import param_hash

_MODES = {
    "none": ["reduction.mode=none"],
    "tolerance": ["reduction.mode=tolerance", "reduction.tau=0.2", "reduction.attempts=[3, 9]"],
    "fixed": ["reduction.mode=fixed", "reduction.selection=random", "reduction.attempts=[3, 9]"],
    "pragmatic": [
        "reduction.mode=pragmatic",
        "reduction.attempts=[3, 6, 9]",
        "reduction.pragmatic_tolerance=0.05",
        "reduction.fraction=0.1",
        "train.eval_every=100",
    ],
}
# pragmatic: injected validation scores at the attempts (the first validation of that step):
# 3 snapshot + cut, 6 ok (snapshot + cut), 9 drops by 0.19 > 0.05 -> roll back to step 6's snapshot
_SCORES = {3: 0.8, 6: 0.79, 9: 0.6}
_VOLATILE = ("wall_time", "samples_per_s", "tokens_per_s", "seconds")


@pytest.fixture
def scripted_scores(monkeypatch):
    real = Trainer.evaluate

    def evaluate(self, split):
        res = real(self, split)
        seen = self.__dict__.setdefault("_scripted", set())
        if self.recipe.reduction.mode == "pragmatic" and split == "val" and self.step in _SCORES:
            if self.step not in seen:
                seen.add(self.step)
                res["accuracy"] = _SCORES[self.step]
        return res

    monkeypatch.setattr(Trainer, "evaluate", evaluate)


def _recipe(toy_recipe, out, mode):
    over = [
        "train.steps=20",
        "train.checkpoint_every=3",
        "train.log_every=1",
        "reduction.plots=false",
        f"out_dir={out}",
    ]
    return apply_overrides(toy_recipe, over + _MODES[mode])


def _kill_at(monkeypatch, step):
    real = Trainer._train_step

    def dying(self):
        if self.step == step:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Trainer, "_train_step", dying)
    return lambda: monkeypatch.setattr(Trainer, "_train_step", real)


def _rows(run):
    return [{k: v for k, v in r.items() if k not in _VOLATILE} for r in read_metrics(Path(run) / "metrics.jsonl")]


@pytest.mark.parametrize("mode", list(_MODES))
def test_resume_is_bit_identical_in_every_mode(mode, toy_recipe, tmp_path, monkeypatch, scripted_scores):
    full = Trainer(recipe_from_dict(_recipe(toy_recipe, tmp_path / "a", mode)))
    s_full = full.fit()

    part = _recipe(toy_recipe, tmp_path / "b", mode)
    restore = _kill_at(monkeypatch, 8)  # after the checkpoint at 6, before the attempt at 9
    with pytest.raises(KeyboardInterrupt):
        Trainer(recipe_from_dict(part)).fit()
    restore()
    ck = load_checkpoint(tmp_path / "b")
    assert ck["step"] == 6 and ck["trainer"]["train_time_s"] > 0  # time is current in every checkpoint
    resumed = Trainer(recipe_from_dict(part), resume=tmp_path / "b")
    s_res = resumed.fit()

    assert param_hash(resumed.model) == param_hash(full.model)
    assert s_res["final_state_sizes"] == s_full["final_state_sizes"]
    assert _rows(tmp_path / "b") == _rows(tmp_path / "a")  # every row once, equal to the uninterrupted run's
    assert s_res["train_time_s"] >= ck["trainer"]["train_time_s"]
    if mode == "pragmatic":
        rb = [r for r in _rows(tmp_path / "b") if r["kind"] == "rollback"]
        assert len(rb) == 1 and rb[0]["step"] == 9 and s_res["final_state_sizes"] == rb[0]["to_sizes"]
    if mode != "none":
        assert s_full["final_state_sizes"] != s_full["initial_state_sizes"]


def test_metrics_after_resume_hold_one_row_per_step(toy_recipe, tmp_path, monkeypatch):
    raw = _recipe(toy_recipe, tmp_path / "b", "none")
    restore = _kill_at(monkeypatch, 8)
    with pytest.raises(KeyboardInterrupt):
        Trainer(recipe_from_dict(raw)).fit()
    restore()
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "kind": "tr')  # a row cut short by the kill
    Trainer(recipe_from_dict(raw), resume=tmp_path / "b").fit()
    train_steps = [r["step"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl") if r["kind"] == "train"]
    assert train_steps == list(range(1, 21))


def test_resume_refuses_a_recipe_that_changes_the_run(toy_recipe, tmp_path, monkeypatch):
    raw = _recipe(toy_recipe, tmp_path / "b", "fixed")
    restore = _kill_at(monkeypatch, 8)
    with pytest.raises(KeyboardInterrupt):
        Trainer(recipe_from_dict(raw)).fit()
    restore()
    config_before = (tmp_path / "b" / "config.yaml").read_text()
    longer = apply_overrides(raw, ["train.steps=60", "optim.lr=0.01"])
    with pytest.raises(ValueError) as e:
        Trainer(recipe_from_dict(longer), resume=tmp_path / "b")
    msg = str(e.value)
    assert "train.steps: 20 -> 60" in msg and "optim.lr: 0.003 -> 0.01" in msg and "--allow-recipe-change" in msg
    assert (tmp_path / "b" / "config.yaml").read_text() == config_before
    # harmless keys (progress, workers, logging, checkpoint frequency) may change
    cosmetic = apply_overrides(raw, ["train.progress=false", "train.log_every=4", "train.checkpoint_every=5"])
    Trainer(recipe_from_dict(cosmetic), resume=tmp_path / "b")
    # asked for explicitly: extended, and recorded
    tr = Trainer(recipe_from_dict(longer), resume=tmp_path / "b", allow_recipe_change=True)
    assert tr.state["recipe_changes"][0]["step"] == 6
    tr.fit()
    rows = read_metrics(tmp_path / "b" / "metrics.jsonl")
    change = [r for r in rows if r["kind"] == "recipe_change"]
    assert len(change) == 1 and {c["key"] for c in change[0]["changes"]} == {"train.steps", "optim.lr"}
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())["train"]["steps"] == 60
    assert load_checkpoint(tmp_path / "b")["trainer"]["recipe_changes"] == tr.state["recipe_changes"]
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["steps"] == 60


def _nan_data(seed=0, **_):
    splits = DATASETS["toy_seq"](seed)  # registered by conftest.py
    splits.train.inputs[5, 3, 0] = float("nan")  # one bad sample
    return splits


if "toy_nan" not in DATASETS:
    register_dataset("toy_nan")(_nan_data)


def test_nan_in_a_batch_blames_the_data_not_the_learning_rate(toy_recipe, tmp_path):
    raw = apply_overrides(toy_recipe, ["data.name=toy_nan", "reduction.mode=none", "train.checkpoint_every=1"])
    tr = Trainer(recipe_from_dict(raw))
    with pytest.raises(FloatingPointError) as e:
        tr.fit()
    msg = str(e.value)
    assert "holds NaN or inf (inputs)" in msg and "data" in msg and "optim.lr" not in msg
    _names_an_existing_checkpoint_or_none(msg, tr)


def test_non_finite_loss_blames_the_optimizer_and_names_a_real_folder(toy_recipe, tmp_path):
    raw = apply_overrides(toy_recipe, ["optim.lr=1e30", "reduction.mode=none", "train.checkpoint_every=1"])
    tr = Trainer(recipe_from_dict(raw))
    with pytest.raises(FloatingPointError, match=r"(loss|gradients) not finite.*lower optim.lr") as e:
        tr.fit()
    assert "inputs" not in str(e.value).split("with finite inputs")[0]
    _names_an_existing_checkpoint_or_none(str(e.value), tr)
    # before any checkpoint was written, the message says so instead of naming a missing folder
    raw = apply_overrides(raw, [f"out_dir={tmp_path / 'fresh'}", "optim.lr=1e38"])
    tr = Trainer(recipe_from_dict(raw))
    with pytest.raises(FloatingPointError) as e:
        tr.fit()
    if tr.step == 0:
        assert "No checkpoint has been written yet" in str(e.value)
    _names_an_existing_checkpoint_or_none(str(e.value), tr)


def _names_an_existing_checkpoint_or_none(msg: str, tr):
    m = re.search(r"is in (\S+): resume", msg)
    if m:
        assert Path(m.group(1)).is_dir() and (Path(m.group(1)) / "last.pt").is_file()
    else:
        assert "No checkpoint has been written yet" in msg and not (tr.run_dir / "checkpoints").exists()
