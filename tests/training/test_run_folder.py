"""Nothing lost, nothing silent: a run folder holding a run is not replaced unasked, fp16 on the
CPU is refused, and throughput rows count exactly the steps their clock timed."""

import types

import pytest
import yaml

from compressmamba.cli import main
from compressmamba.training import Trainer, recipe_from_dict
from compressmamba.training import trainer as trainer_mod
from compressmamba.training.metrics import read_metrics


def _short(toy_recipe, **train):
    return dict(
        toy_recipe,
        train={**toy_recipe["train"], "steps": 4, "eval_every": 2, "log_every": 2, **train},
        reduction={"mode": "none", "plots": False},
    )


def test_a_new_run_in_a_folder_holding_one_is_refused_and_overwrite_replaces_it(toy_recipe, tmp_path, capsys):
    """Defect: a second run without --resume replaced metrics, model and checkpoint of a finished
    one and left old and new plots mixed."""
    run = tmp_path / "run"
    Trainer(recipe_from_dict(_short(toy_recipe))).fit()
    (run / "plots").mkdir(exist_ok=True)
    (run / "plots" / "energy_step999.png").write_bytes(b"an old run's plot")
    (run / "notes.txt").write_text("the user's own file")
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(ValueError) as e:
        Trainer(recipe_from_dict(_short(toy_recipe, steps=2)))
    msg = str(e.value)
    assert f"--resume {run}" in msg and "--overwrite" in msg and "out_dir=" in msg and "\n" not in msg
    assert (run / "metrics.jsonl").read_text() == before  # nothing touched
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_short(toy_recipe)))
    assert main(["train", str(recipe), "train.steps=2"]) == 2  # the command line says the same, in one line
    assert "--overwrite" in capsys.readouterr().err
    assert main(["train", str(recipe), "train.steps=2", "--overwrite"]) == 0
    rows = read_metrics(run / "metrics.jsonl")
    assert max(r["step"] for r in rows) == 2 and not (run / "plots" / "energy_step999.png").exists()
    assert (run / "notes.txt").exists()  # only the run's own files are removed
    # resuming the run in its own folder is not a new run
    assert Trainer(recipe_from_dict(_short(toy_recipe, steps=2)), resume=run).step == 2


@pytest.mark.parametrize("under", [False, True])
def test_an_out_dir_that_is_a_file_is_refused_naming_it(toy_recipe, tmp_path, under):
    """Probe (issue 25): out_dir inside a file ended in NotADirectoryError's traceback (out_dir
    naming a file: in FileExistsError's words, after the data were built)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "run" if under else blocker
    with pytest.raises(ValueError, match=rf"out_dir = '{out}': {blocker} is a file"):
        Trainer(recipe_from_dict({**_short(toy_recipe), "out_dir": str(out)}))
    assert blocker.read_text() == "not a folder"


def test_resume_with_another_model_shape_is_refused_in_one_line(toy_recipe, tmp_path):
    """Probe (issue 25): --resume --allow-recipe-change with model.d_model changed ended in
    load_state_dict's size-mismatch traceback."""
    run = tmp_path / "run"
    Trainer(recipe_from_dict(_short(toy_recipe))).fit()
    wider = _short(toy_recipe)
    wider["model"] = {**wider["model"], "d_model": 10}
    with pytest.raises(ValueError) as e:
        Trainer(recipe_from_dict(wider), resume=run, allow_recipe_change=True)
    msg = str(e.value)
    assert "model.d_model 6 -> 10" in msg and "out_dir=" in msg and "\n" not in msg, msg


def test_resume_and_overwrite_together_are_refused(toy_recipe, tmp_path):
    """Probe (issue 25): --resume RUN --overwrite resumed and ignored --overwrite, in silence."""
    run = tmp_path / "run"
    Trainer(recipe_from_dict(_short(toy_recipe))).fit()
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match=r"--resume .* and --overwrite contradict each other"):
        Trainer(recipe_from_dict(_short(toy_recipe)), resume=run, overwrite=True)
    assert (run / "metrics.jsonl").read_text() == before


def test_a_tracker_that_is_not_installed_is_refused_naming_the_key(toy_recipe, monkeypatch):
    """Probe (issue 25): train.report_to=wandb without wandb installed trained on after
    Accelerate's warning and logged nowhere."""
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    with pytest.raises(ValueError, match=r"train\.report_to = 'wandb': .*pip install wandb"):
        Trainer(recipe_from_dict(_short(toy_recipe, report_to="wandb")))


def test_fp16_on_the_cpu_is_refused_naming_the_key(toy_recipe):
    """Weak spot: fp16 on the CPU was accepted and recorded while the run trained in fp32."""
    with pytest.raises(ValueError, match=r"train\.mixed_precision = 'fp16'.*no or bf16"):
        Trainer(recipe_from_dict(_short(toy_recipe, mixed_precision="fp16")))


def test_throughput_rows_count_what_their_window_timed(toy_recipe, monkeypatch):
    """Defect: after a cut or an evaluation off the logging grid the clock restarted but the
    counts did not. A fake clock: each training step takes 1 s, each evaluation and cut 100 s;
    every row must then read batch_size samples/s exactly (the samples of its window over the
    seconds its steps took)."""
    clock = [1000.0]
    monkeypatch.setattr(trainer_mod, "time", types.SimpleNamespace(time=lambda: clock[0]))

    def advancing(fn, seconds):
        def wrapped(*a, **k):
            out = fn(*a, **k)
            clock[0] += seconds
            return out

        return wrapped

    monkeypatch.setattr(Trainer, "_train_step", advancing(Trainer._train_step, 1.0))
    monkeypatch.setattr(Trainer, "evaluate", advancing(Trainer.evaluate, 100.0))
    monkeypatch.setattr(Trainer, "_cut", advancing(Trainer._cut, 100.0))
    raw = dict(toy_recipe, train={**toy_recipe["train"], "steps": 12, "eval_every": 6, "log_every": 4})
    raw["reduction"] = {"mode": "fixed", "fraction": 0.5, "attempts": [5], "plots": False}
    tr = Trainer(recipe_from_dict(raw))
    tr.fit()
    rows = tr.metrics_rows("train")
    assert [r["step"] for r in rows] == [4, 8, 12]
    assert tr.metrics_rows("cut")[0]["step"] == 5  # a cut and an evaluation (6) off the logging grid
    bs = raw["train"]["batch_size"]
    for r in rows:  # 4 steps of bs samples in 4 s of training
        assert r["samples_per_s"] == pytest.approx(bs), r


def test_training_reports_repaired_input_as_prepare_data_does(tmp_path, capsys):
    """Weak spot: a corpus of invalid UTF-8 trained without a word; prepare-data reported it."""
    (tmp_path / "c").mkdir()
    good = "def f(x):\n    return x + 1\n" * 40
    (tmp_path / "c" / "a.txt").write_bytes(good.encode() + b"\xff\xfe\x80 binary \xc3(" * 30)
    (tmp_path / "c" / "b.txt").write_text(good)
    raw = {
        "name": "repairs",
        "out_dir": str(tmp_path / "run"),
        "model": {"name": "mamba", "d_model": 8, "n_layers": 1, "state_size": 4},
        "data": {"name": "text_lm", "files": str(tmp_path / "c" / "*.txt"), "seq_len": 16, "val_fraction": 0.5},
        "train": {"steps": 1, "batch_size": 2, "eval_batches": 1, "progress": False},
        "reduction": {"mode": "none", "plots": False},
    }
    Trainer(recipe_from_dict(raw))
    err = capsys.readouterr().err
    assert "invalid UTF-8 sequences" in err and "repaired" in err, err
