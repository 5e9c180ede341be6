"""One run per folder at the same moment (issue 30, item 5): the run folder's lock."""

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml

from compressmamba.cli import main
from compressmamba.training import Trainer, recipe_from_dict
from compressmamba.training.config import apply_overrides
from compressmamba.training.run_lock import LOCK_NAME, RunFolderBusy

_HOLD = (
    "import sys; from compressmamba.training import run_lock; run_lock.acquire(sys.argv[1]); "
    "print('held', flush=True); sys.stdin.read()"
)


@pytest.fixture
def other_process_holds():
    """``hold(run_dir)``: another process takes ``run_dir``'s lock and keeps it until the test ends."""
    procs = []

    def hold(run_dir):
        p = subprocess.Popen([sys.executable, "-c", _HOLD, str(run_dir)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p

    yield hold
    for p in procs:
        p.stdin.close()
        p.wait(timeout=60)


def _short(toy_recipe):
    over = ["train.steps=4", "train.eval_every=2", "reduction.mode=none", "reduction.attempts=[]"]
    return apply_overrides(toy_recipe, [*over, "reduction.plots=false"])


def test_a_second_run_into_a_busy_folder_is_refused_naming_the_holder(
    toy_recipe, tmp_path, other_process_holds, capsys
):
    run = toy_recipe["out_dir"]
    holder = other_process_holds(run)
    with pytest.raises(RunFolderBusy) as refused:
        Trainer(recipe_from_dict(_short(toy_recipe)))
    msg = str(refused.value)
    assert "\n" not in msg and f"pid {holder.pid}" in msg and f"host {socket.gethostname()}" in msg
    assert f"{run}/{LOCK_NAME}" in msg
    assert not (os.path.exists(f"{run}/config.yaml") or os.path.exists(f"{run}/metrics.jsonl"))  # touched nothing

    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(_short(toy_recipe)))
    assert main(["train", str(recipe_file)]) == 2  # the CLI: one line, exit 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is busy" in err[0] and f"pid {holder.pid}" in err[0]


def test_a_stale_lock_of_a_dead_process_is_taken_over_and_the_lock_goes_with_the_run(toy_recipe, capsys):
    run = toy_recipe["out_dir"]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    os.makedirs(run)
    lock = os.path.join(run, LOCK_NAME)
    with open(lock, "w") as f:
        json.dump({"host": socket.gethostname(), "pid": int(dead.stdout), "started": "then"}, f)
    tr = Trainer(recipe_from_dict(_short(toy_recipe)))
    assert json.load(open(lock))["pid"] == os.getpid()  # held by this run now
    assert f"took over the stale lock {lock}" in capsys.readouterr().err
    tr.fit()
    assert not os.path.exists(lock)  # released with the run


def test_the_lock_is_released_when_a_run_fails_or_is_refused(toy_recipe, monkeypatch, other_process_holds):
    run = toy_recipe["out_dir"]

    def boom(self):
        raise KeyboardInterrupt

    real = Trainer._train_step
    monkeypatch.setattr(Trainer, "_train_step", boom)
    with pytest.raises(KeyboardInterrupt):
        Trainer(recipe_from_dict(_short(toy_recipe))).fit()
    monkeypatch.setattr(Trainer, "_train_step", real)
    assert not os.path.exists(os.path.join(run, LOCK_NAME))
    with pytest.raises(ValueError, match="already holds a run"):  # refused without --resume
        Trainer(recipe_from_dict(_short(toy_recipe)))
    other_process_holds(run)  # nothing of this process holds it any more
