import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compressmamba.training import Trainer, recipe_from_dict
from compressmamba.training.checkpoint import atomic_save, load_checkpoint
from compressmamba.training.config import apply_overrides
from compressmamba.training.metrics import read_metrics
from compressmamba.training.trainer import param_hash


def test_run_cuts_logs_and_summarises(toy_recipe):
    tr = Trainer(recipe_from_dict(toy_recipe))
    summary = tr.fit()
    run = Path(toy_recipe["out_dir"])
    assert summary["initial_state_sizes"] == [12, 12] and summary["final_state_sizes"] == [6, 6]
    assert summary["n_cuts"] == 2 and summary["test_accuracy"] is not None
    rows = read_metrics(run / "metrics.jsonl")
    cuts = [r for r in rows if r["kind"] == "cut"]
    assert [c["new_sizes"] for c in cuts] == [[9, 9], [6, 6]]
    assert cuts[0]["optimizer"]["dropped"] > 0  # the LRU's basis change drops SSM moments
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert {"loss", "lr", "state_sizes", "samples_per_s", "wall_time"} <= set(train_rows[0])
    assert json.loads((run / "summary.json").read_text())["final_state_sizes"] == [6, 6]
    ck = load_checkpoint(run)
    assert ck["state_sizes"] == [6, 6] and ck["step"] == 30


def test_reporting_rule_test_at_best_val_after_last_cut(toy_recipe):
    tr = Trainer(recipe_from_dict(toy_recipe))
    seq = iter(
        [
            {"loss": 1.0, "accuracy": 0.9},
            {"loss": 1.0, "accuracy": 0.5},
            {"loss": 1.0, "accuracy": 0.6},
            {"loss": 1.0, "accuracy": 0.55},
        ]
    )
    tests = iter([{"loss": 0, "accuracy": a} for a in (0.91, 0.51, 0.61, 0.0)])
    tr.evaluate = lambda split: next(seq) if split == "val" else next(tests)
    tr.evaluate_and_track()  # best 0.9, test 0.91
    tr.evaluate_and_track(after_cut=True)  # a cut resets: best 0.5, test 0.51
    tr.evaluate_and_track()  # improves: 0.6 -> test 0.61
    tr.evaluate_and_track()  # worse: test stays
    assert tr.state["test_at_best"]["accuracy"] == 0.61 and tr.state["val_at_best"]["accuracy"] == 0.6


def test_atomic_save_keeps_old_file_on_crash(tmp_path):
    p = tmp_path / "ck.pt"
    atomic_save({"a": torch.ones(3)}, p)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_save({"a": torch.zeros(3), "b": Boom()}, p)
    assert torch.equal(torch.load(p)["a"], torch.ones(3))
    assert [f.name for f in tmp_path.iterdir()] == ["ck.pt"]


def test_resume_after_cut_is_bit_for_bit(toy_recipe, tmp_path, monkeypatch):
    # random selection: the resumed run must draw the states the uninterrupted one drew at step 16
    over = ["train.checkpoint_every=5", "reduction.selection=random"]
    full = apply_overrides(toy_recipe, over + [f"out_dir={tmp_path / 'a'}"])
    ta = Trainer(recipe_from_dict(full))
    ta.fit()
    ref_hash = param_hash(ta.model)
    ref_losses = [r["loss"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl") if r["kind"] == "train"]

    part = apply_overrides(toy_recipe, over + [f"out_dir={tmp_path / 'b'}"])
    tb = Trainer(recipe_from_dict(part))
    real_step = Trainer._train_step

    def dying(self):
        if self.step == 13:  # after the first cut (8) and the checkpoint at 10, before the cut at 16
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Trainer, "_train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        tb.fit()
    monkeypatch.setattr(Trainer, "_train_step", real_step)
    assert load_checkpoint(tmp_path / "b")["step"] == 10
    tc = Trainer(recipe_from_dict(part), resume=tmp_path / "b")
    assert tc.model.state_sizes == [9, 9] and tc.step == 10
    tc.fit()
    assert tc.model.state_sizes == ta.model.state_sizes == [6, 6]
    assert param_hash(tc.model) == ref_hash
    losses = [r["loss"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl") if r["kind"] == "train"]
    assert losses[-4:] == ref_losses[-4:]


def _lr_trace(recipe, monkeypatch):
    """Run ``recipe``; return the learning rate of every optimizer group at every step, and the model."""
    trace, real_step = [], Trainer._train_step

    def recording(self):
        out = real_step(self)
        trace.append({g["name"]: g["lr"] for g in self.opt.param_groups})
        return out

    monkeypatch.setattr(Trainer, "_train_step", recording)
    tr = Trainer(recipe_from_dict(recipe))
    tr.fit()
    monkeypatch.setattr(Trainer, "_train_step", real_step)
    return trace, tr.model


def test_lr_schedule_continues_across_cuts_and_workers_do_not_change_batches(toy_recipe, tmp_path, monkeypatch):
    cut, m_cut = _lr_trace(apply_overrides(toy_recipe, [f"out_dir={tmp_path / 'a'}"]), monkeypatch)
    plain, _ = _lr_trace(apply_overrides(toy_recipe, [f"out_dir={tmp_path / 'b'}", "reduction.mode=none"]), monkeypatch)
    assert m_cut.state_sizes == [6, 6] and len(cut) == len(plain) == 30
    assert cut == plain and cut[0]["ssm"] == pytest.approx(0.5 * cut[0]["decay"]) and cut[2] != cut[20]
    # DataLoader workers build the same batches: same trained parameters
    over = [f"out_dir={tmp_path / 'c'}", "train.num_workers=2"]
    _, m_workers = _lr_trace(apply_overrides(toy_recipe, over), monkeypatch)
    assert param_hash(m_workers) == param_hash(m_cut)


def test_nan_loss_stops_with_a_clear_error(toy_recipe):
    tr = Trainer(recipe_from_dict(apply_overrides(toy_recipe, ["optim.lr=1e30", "reduction.mode=none"])))
    with pytest.raises(FloatingPointError, match="lower optim.lr"):
        tr.fit()


@pytest.mark.slow
def test_ddp_two_processes_reach_identical_cuts(tmp_path):
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(
        "name: ddp\nseed: 1\n"
        f"out_dir: {tmp_path / 'run'}\n"
        "model: {name: lru, d_model: 6, n_layers: 2, state_size: 10, dropout: 0.1}\n"
        "data: {name: smnist, pool: 4, limit_train: 400}\n"
        "optim: {lr: 0.003}\n"
        "train: {steps: 12, batch_size: 8, eval_every: 6, eval_batches: 2, progress: false}\n"
        "reduction: {mode: tolerance, tau: 0.1, attempts: [4, 8]}\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "2",
        "-m",
        "compressmamba",
        "train",
        str(recipe),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    r0 = [json.loads(x) for x in (tmp_path / "run" / "rank0_hashes.jsonl").read_text().splitlines()]
    r1 = [json.loads(x) for x in (tmp_path / "run" / "rank1_hashes.jsonl").read_text().splitlines()]
    assert len(r0) == 3 and r0 == r1  # two cuts and the end
    assert r0[-1]["sizes"] != [10, 10]


def test_pragmatic_rolls_back_and_stops_cutting(toy_recipe):
    raw = apply_overrides(
        toy_recipe,
        [
            "reduction.mode=pragmatic",
            "reduction.attempts=[5, 10, 15, 20]",
            "reduction.pragmatic_tolerance=0.05",
            "reduction.fraction=0.1",
            "train.eval_every=100",
        ],
    )
    tr = Trainer(recipe_from_dict(raw))
    real = tr.evaluate
    scores = iter([0.8, 0.79, 0.6])  # attempt 1: snapshot + cut; 2: ok, cut; 3: drop > 0.05 → roll back

    seen = set()

    def fake(split):  # the first validation at an attempt step is the pragmatic check
        res = real(split)
        if split == "val" and tr.step in (5, 10, 15) and tr.step not in seen:
            seen.add(tr.step)
            res["accuracy"] = next(scores)
        return res

    tr.evaluate = fake
    tr.fit()
    rows = read_metrics(Path(raw["out_dir"]) / "metrics.jsonl")
    cuts = [r for r in rows if r["kind"] == "cut"]
    rb = [r for r in rows if r["kind"] == "rollback"]
    assert [c["new_sizes"] for c in cuts] == [[10, 10], [9, 9]]
    assert len(rb) == 1 and rb[0]["step"] == 15 and rb[0]["to_sizes"] == [10, 10]
    assert tr.model.state_sizes == [10, 10] and tr.state["cutting_stopped"]
