"""Preemption (issue 30, item 4): SIGTERM or SIGUSR1 finish the step, checkpoint it, exit 75; the
resumed run equals an uninterrupted one."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from compressmamba.training import Trainer, recipe_from_dict
from compressmamba.training.checkpoint import load_checkpoint
from compressmamba.training.config import apply_overrides
from compressmamba.training.metrics import read_metrics
from compressmamba.training.preemption import PREEMPTED_EXIT_CODE, Preempted
from compressmamba.training.trainer import param_hash

_VOLATILE = ("wall_time", "samples_per_s", "tokens_per_s", "seconds")


def _recipe(toy_recipe, out, *more):
    over = ["train.steps=20", "train.checkpoint_every=3", "train.log_every=1", "reduction.plots=false",
            "reduction.selection=random", "reduction.attempts=[3, 9]", f"out_dir={out}", *more]  # fmt: skip
    return apply_overrides(toy_recipe, over)


def _rows(run):
    rows = read_metrics(Path(run) / "metrics.jsonl")
    return [{k: v for k, v in r.items() if k not in _VOLATILE} for r in rows if r["kind"] != "preempted"]


def _signal_at(monkeypatch, step, sig):
    """Send ``sig`` to this process as step ``step + 1`` starts: the run must still finish it."""
    real = Trainer._train_step

    def signalled(self):
        if self.step == step:
            os.kill(os.getpid(), sig)
        return real(self)

    monkeypatch.setattr(Trainer, "_train_step", signalled)
    return lambda: monkeypatch.setattr(Trainer, "_train_step", real)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_stop_signal_checkpoints_that_step_and_the_resumed_run_equals_an_uninterrupted_one(
    sig, toy_recipe, tmp_path, monkeypatch, capsys
):
    full = Trainer(recipe_from_dict(_recipe(toy_recipe, tmp_path / "a")))
    s_full = full.fit()

    before = signal.getsignal(sig)
    part = _recipe(toy_recipe, tmp_path / "b")
    restore = _signal_at(monkeypatch, 7, sig)  # after the checkpoint at 6: only the stop writes one at 8
    with pytest.raises(Preempted) as stopped:
        Trainer(recipe_from_dict(part)).fit()
    restore()
    assert stopped.value.code == PREEMPTED_EXIT_CODE == 75 and stopped.value.step == 8
    assert signal.getsignal(sig) is before  # the handlers live only as long as the run
    err = capsys.readouterr().err.strip().splitlines()
    assert f"preempted by {signal.Signals(sig).name} at step 8 of 20" in err[-1]
    assert f"--resume {tmp_path / 'b'}" in err[-1]
    assert load_checkpoint(tmp_path / "b")["step"] == 8
    assert [r["step"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl") if r["kind"] == "preempted"] == [8]

    resumed = Trainer(recipe_from_dict(part), resume=tmp_path / "b")
    s_res = resumed.fit()
    assert param_hash(resumed.model) == param_hash(full.model)
    assert s_res["final_state_sizes"] == s_full["final_state_sizes"] != s_full["initial_state_sizes"]
    assert _rows(tmp_path / "b") == _rows(tmp_path / "a")


# `compressmamba train` in a fresh interpreter, with the tests' toy dataset registered (conftest.py);
# as step PAUSE + 1 starts it touches MARK and waits until MARK is gone (the test signals, then removes it)
_MAIN = """
import pathlib, sys, time
sys.path.insert(0, {here!r})
import conftest
from compressmamba.cli import main
from compressmamba.training import Trainer

real, mark = Trainer._train_step, pathlib.Path({mark!r})
def paused(self):
    if self.step == {pause}:
        mark.touch()
        end = time.monotonic() + 600
        while mark.exists() and time.monotonic() < end:
            time.sleep(0.02)
    return real(self)
Trainer._train_step = paused
sys.exit(main())
"""


def _cli(recipe_file, mark, pause, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = _MAIN.format(here=str(Path(__file__).parent), mark=str(mark), pause=pause)
    cmd = [sys.executable, "-c", code, "train", str(recipe_file), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(mark: Path, proc, limit_s: float = 600) -> None:
    end = time.monotonic() + limit_s
    while time.monotonic() < end and proc.poll() is None and not mark.exists():
        time.sleep(0.02)
    assert mark.exists(), f"the run never reached its pause: {proc.poll()} {proc.stderr.read()[-2000:]}"


@pytest.mark.slow  # three interpreters: about 20 s on an idle machine
def test_sigterm_to_the_cli_exits_75_with_a_checkpoint_and_resume_continues_bit_for_bit(toy_recipe, tmp_path):
    recipe = _recipe(toy_recipe, tmp_path / "b")
    recipe_file, mark = tmp_path / "recipe.yaml", tmp_path / "paused"
    recipe_file.write_text(yaml.safe_dump(recipe))
    proc = _cli(recipe_file, mark, 10)
    _wait_for(mark, proc)
    proc.send_signal(signal.SIGTERM)
    mark.unlink()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == PREEMPTED_EXIT_CODE, err[-3000:]
    assert "Traceback" not in err and "preempted by SIGTERM at step 11 of 20" in err.strip().splitlines()[-1]
    assert load_checkpoint(tmp_path / "b")["step"] == 11 and not (tmp_path / "b" / ".run.lock").exists()

    proc = _cli(recipe_file, mark, -1, "--resume", str(tmp_path / "b"))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    (tmp_path / "full.yaml").write_text(yaml.safe_dump({**recipe, "out_dir": str(tmp_path / "a")}))
    proc = _cli(tmp_path / "full.yaml", mark, -1)  # the same interpreter settings as the runs it is compared with
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    full, resumed = (load_checkpoint(tmp_path / run)["model"] for run in ("a", "b"))
    for k, v in full.items():
        assert torch.equal(v, resumed[k]), k
    assert _rows(tmp_path / "b") == _rows(tmp_path / "a")


_RANK_MAIN = """
import os, pathlib, sys, time
sys.path.insert(0, {here!r})
import conftest
from compressmamba.cli import main
from compressmamba.training import Trainer

real, mark = Trainer._train_step, pathlib.Path({mark!r})
def paused(self):  # rank 1 only: the other rank gets no signal and must stop with it
    if self.step == {pause} and os.environ["RANK"] == "1":
        mark.write_text(str(os.getpid()))
        end = time.monotonic() + 600
        while mark.exists() and time.monotonic() < end:
            time.sleep(0.02)
    return real(self)
Trainer._train_step = paused
sys.exit(main())
"""


def _torchrun(tmp_path, recipe_file, pause, *args):
    script = tmp_path / f"rank_main_{pause}.py"
    script.write_text(_RANK_MAIN.format(here=str(Path(__file__).parent), mark=str(tmp_path / "paused"), pause=pause))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           "train", str(recipe_file), *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow  # three two-rank runs: about a minute on an idle machine
def test_sigterm_to_one_of_two_ranks_stops_both_at_one_step_and_resume_equals_an_uninterrupted_run(
    toy_recipe, tmp_path
):
    recipe = _recipe(toy_recipe, tmp_path / "b")
    recipe_file, mark = tmp_path / "recipe.yaml", tmp_path / "paused"
    recipe_file.write_text(yaml.safe_dump(recipe))
    proc = _torchrun(tmp_path, recipe_file, 10)
    _wait_for(mark, proc)
    os.kill(int(mark.read_text()), signal.SIGTERM)
    mark.unlink()
    out, err = proc.communicate(timeout=900)
    assert proc.returncode != 0 and err.count("preempted by SIGTERM at step 11 of 20") == 1, err[-3000:]
    assert load_checkpoint(tmp_path / "b")["step"] == 11 and not (tmp_path / "b" / ".run.lock").exists()
    for run in (("--resume", str(tmp_path / "b")), ()):
        if not run:  # the uninterrupted run
            recipe_file.write_text(yaml.safe_dump({**recipe, "out_dir": str(tmp_path / "a")}))
        out, err = _torchrun(tmp_path, recipe_file, -1, *run).communicate(timeout=900)
        assert "preempted" not in err and (tmp_path / ("b" if run else "a") / "summary.json").exists(), err[-3000:]
    full, resumed = (load_checkpoint(tmp_path / run)["model"] for run in ("a", "b"))
    for k, v in full.items():
        assert torch.equal(v, resumed[k]), k
    assert _rows(tmp_path / "b") == _rows(tmp_path / "a")


class _SignalDisposition(torch.utils.data.Dataset):
    """Each item says whether the process that built it ignores SIGUSR1, and SIGTERM."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {
            "usr1_ignored": torch.tensor(signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN),
            "term_ignored": torch.tensor(signal.getsignal(signal.SIGTERM) == signal.SIG_IGN),
            "pid": torch.tensor(os.getpid()),
        }


def test_dataloader_workers_leave_the_advance_warning_to_the_training_process():
    """Workers ignore SIGUSR1 (the trainer's to handle) but not SIGTERM, by which multiprocessing
    stops them when the process exits (ignoring it hung every exit with live workers)."""
    from compressmamba.training.data import StepBatches

    batches = list(StepBatches(_SignalDisposition(), 2, seed=0).stream(0, 2, num_workers=1))
    assert all((b["pid"] != os.getpid()).all() for b in batches)
    assert all(b["usr1_ignored"].all() and not b["term_ignored"].any() for b in batches)
    assert signal.getsignal(signal.SIGTERM) != signal.SIG_IGN  # not in the training process itself


def test_a_process_with_live_dataloader_workers_exits():
    """The hang this guards: workers that ignored SIGTERM outlived multiprocessing's terminate()
    at interpreter exit, whose join() then waited forever (pytest itself never exited)."""
    code = (
        "from compressmamba.training.data import StepBatches\n"
        "import torch\n"
        "class D(torch.utils.data.Dataset):\n"
        "    def __len__(self): return 64\n"
        "    def __getitem__(self, i): return {'x': torch.tensor(float(i))}\n"
        "it = StepBatches(D(), 2, seed=0).stream(0, 50, num_workers=2)\n"
        "next(it)\n"  # workers alive, the stream left open at exit
        "print('done', flush=True)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "done" in res.stdout, res.stderr[-2000:]
