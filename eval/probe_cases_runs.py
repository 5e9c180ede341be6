"""Fault-probe cases: run folders (rerun, overwrite, resume, out_dir) and damaged or hostile checkpoints."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from compressmamba.eval.probe_core import (
    LM,
    TINY_LM,
    Outcome,
    Probe,
    case,
    damage_file,
    file_hashes,
)


# run folders -------------------------------------------------------------------------------------
def _finished_run_intact(pr: Probe, d: Path, o: Outcome) -> str | None:
    before = json.loads((d / "hashes.json").read_text())
    after = file_hashes(d / "run")
    changed = sorted(k for k in before if after.get(k) != before[k])
    return f"the finished run changed: {changed}" if changed else None


@case(
    "rerun_finished_no_resume",
    "refused",
    "train again into a finished run's folder, with other steps and no --resume",
    ("--resume", "--overwrite"),
    check=_finished_run_intact,
)
def _(pr, d):
    run = pr.copy_run(d)
    (d / "hashes.json").write_text(json.dumps(file_hashes(run)))
    return pr.train_lm(d, f"out_dir={run}", "train.steps=4")


def _overwrite_cleared(pr: Probe, d: Path, o: Outcome) -> str | None:
    run = d / "run"
    if (run / "plots" / "stale_from_old_run.png").exists():
        return "--overwrite left the old run's plots beside the new ones"
    if not (run / "notes.txt").is_file():
        return "--overwrite removed a file that was not the run's"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    if max(r.get("step", 0) for r in rows) != 4:
        return "metrics.jsonl mixes the old run's rows with the new run's"
    return None


@case(
    "overwrite_finished",
    "succeeds",
    "--overwrite a finished run (new run, old files gone, others kept)",
    check=_overwrite_cleared,
)
def _(pr, d):
    run = pr.copy_run(d)
    (run / "plots" / "stale_from_old_run.png").write_bytes(b"old")
    (run / "notes.txt").write_text("mine")
    return pr.train_lm(d, f"out_dir={run}", "train.steps=4", "--overwrite")


@case(
    "resume_finished_same_recipe",
    "either",
    "--resume a finished run with the same recipe (nothing to do; nothing lost)",
    check=_finished_run_intact,
)
def _(pr, d):
    run = pr.copy_run(d)
    (d / "hashes.json").write_text(json.dumps({"metrics.jsonl": file_hashes(run)["metrics.jsonl"]}))
    return pr.train_lm(d, f"out_dir={run}", "--resume", str(run))


def resumed_to(steps: int):
    def check(pr: Probe, d: Path, o: Outcome) -> str | None:
        s = json.loads((d / "run" / "summary.json").read_text())
        if s.get("steps") not in (steps, None) and s.get("step") not in (steps, None):
            return f"summary says {s.get('steps')} steps, expected {steps}"
        rows = [json.loads(x) for x in (d / "run" / "metrics.jsonl").read_text().splitlines() if x.strip()]
        if max(r.get("step", 0) for r in rows) != steps:
            return f"metrics.jsonl ends at step {max(r.get('step', 0) for r in rows)}, expected {steps}"
        return None

    return check


@case(
    "resume_more_steps_allowed",
    "succeeds",
    "--resume with train.steps raised and --allow-recipe-change",
    check=resumed_to(8),
)
def _(pr, d):
    run = pr.copy_run(d)
    return pr.train_lm(d, f"out_dir={run}", "train.steps=8", "--resume", str(run), "--allow-recipe-change")


@case(
    "resume_changed_recipe",
    "refused",
    "--resume with train.steps changed, no --allow-recipe-change",
    ("train.steps", "--allow-recipe-change"),
    check=_finished_run_intact,
)
def _(pr, d):
    run = pr.copy_run(d)
    (d / "hashes.json").write_text(json.dumps(file_hashes(run)))
    return pr.train_lm(d, f"out_dir={run}", "train.steps=8", "--resume", str(run))


@case(
    "resume_changed_model_shape",
    "refused",
    "--resume with model.d_model changed (even with --allow-recipe-change)",
    ("d_model",),
    check=_finished_run_intact,
)
def _(pr, d):
    run = pr.copy_run(d)
    (d / "hashes.json").write_text(json.dumps(file_hashes(run)))
    return pr.train_lm(d, f"out_dir={run}", "model.d_model=24", "--resume", str(run), "--allow-recipe-change")


@case(
    "resume_and_overwrite",
    "refused",
    "--resume RUN and --overwrite together",
    ("--resume", "--overwrite"),
    check=_finished_run_intact,
)
def _(pr, d):
    run = pr.copy_run(d)
    (d / "hashes.json").write_text(json.dumps(file_hashes(run)))
    return pr.train_lm(d, f"out_dir={run}", "--resume", str(run), "--overwrite")


def _tracker_really_there(pr: Probe, d: Path, o: Outcome) -> str | None:
    import importlib.util

    if o.rc == 0 and importlib.util.find_spec("wandb") is None:
        return "trained with train.report_to=wandb and no wandb installed: logged nowhere"
    return None


@case(
    "report_to_not_installed",
    "either",
    "train.report_to=wandb (refused when wandb is not installed)",
    ("train.report_to", "wandb"),
    check=_tracker_really_there,
)
def _(pr, d):
    return pr.train_lm(d, "train.report_to=wandb", f"out_dir={d / 'run'}")


@case("resume_no_checkpoint", "refused", "--resume an empty folder", ("last.pt",))
def _(pr, d):
    (d / "empty").mkdir()
    return pr.train_lm(d, f"out_dir={d / 'empty'}", "--resume", str(d / "empty"))


@case("resume_missing_folder", "refused", "--resume a folder that does not exist", ("no_such_run",))
def _(pr, d):
    return pr.train_lm(d, f"out_dir={d / 'run'}", "--resume", str(d / "no_such_run"))


@case("out_dir_is_file", "refused", "out_dir= names an existing file", ("out_dir", "a_file"))
def _(pr, d):
    (d / "a_file").write_text("not a folder")
    return pr.train_lm(d, f"out_dir={d / 'a_file'}")


@case("out_dir_under_file", "refused", "out_dir= names a folder inside a file", ("out_dir", "a_file"))
def _(pr, d):
    (d / "a_file").write_text("not a folder")
    return pr.train_lm(d, f"out_dir={d / 'a_file' / 'run'}")


_HOLD_LOCK = (
    "import sys; from compressmamba.training import run_lock; run_lock.acquire(sys.argv[1]); "
    "print('held', flush=True); sys.stdin.read()"
)


@case(
    "run_folder_busy",
    "refused",
    "train into a folder whose lock another live process holds (two runs at the same moment)",
    ("busy", "pid", ".run.lock"),
)
def _(pr, d):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(d / "run")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=pr.env(), text=True)  # fmt: skip
    try:
        holder.stdout.readline()
        return pr.train_lm(d, f"out_dir={d / 'run'}")
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def _lock_taken_over(pr: Probe, d: Path, o: Outcome) -> str | None:
    if "took over the stale lock" not in o.stderr:
        return "the stale lock was taken over in silence"
    return "the run left its lock file behind" if (d / "run" / ".run.lock").exists() else None


@case(
    "run_folder_stale_lock",
    "succeeds",
    "train into a folder whose lock names a dead process of this host",
    check=_lock_taken_over,
)
def _(pr, d):
    dead = pr.run(["-c", "import os; print(os.getpid())"], d)
    (d / "run").mkdir()
    (d / "run" / ".run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))
    return pr.train_lm(d, f"out_dir={d / 'run'}")


_FSIZE_LIMITED = (
    "import resource, runpy, sys; n = int(sys.argv.pop(1)); resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); "
    "sys.argv[0] = 'compressmamba'; runpy.run_module('compressmamba', run_name='__main__')"
)


@case(
    "ckpt_write_file_too_large",
    "refused",
    "--resume with more steps under ulimit -f below a checkpoint's size (a disk that fills up)",
    ("last.pt", "EFBIG", "last checkpoint"),
    check=_finished_run_intact,
)
def _(pr, d):
    run = pr.copy_run(d)
    (d / "hashes.json").write_text(json.dumps({"checkpoints/last.pt": file_hashes(run)["checkpoints/last.pt"]}))
    limit = str((run / "checkpoints" / "last.pt").stat().st_size // 2)
    args = ["train", LM, *TINY_LM, f"out_dir={run}", "train.steps=8", "--resume", str(run), "--allow-recipe-change"]
    return pr.run(["-c", _FSIZE_LIMITED, limit, *args], d)


# checkpoints ---------------------------------------------------------------------------------------
def _resume_damaged(damage: Callable[[Path], None]):
    def fn(pr: Probe, d: Path) -> Outcome:
        run = pr.copy_run(d)
        damage(run / "checkpoints" / "last.pt")
        (d / "hashes.json").write_text(json.dumps({"checkpoints/prev.pt": file_hashes(run)["checkpoints/prev.pt"]}))
        return pr.train_lm(d, f"out_dir={run}", "train.steps=8", "--resume", str(run), "--allow-recipe-change")

    return fn


case(
    "ckpt_overwritten_same_size",
    "refused",
    "--resume from last.pt with 4 KiB overwritten mid-file (same size)",
    ("last.pt", "prev.pt"),
    check=_finished_run_intact,
)(_resume_damaged(lambda p: damage_file(p, 0.5, os.urandom(4096))))
case(
    "ckpt_truncated", "refused", "--resume from last.pt cut to half its size", ("last.pt",), check=_finished_run_intact
)(_resume_damaged(lambda p: os.truncate(p, p.stat().st_size // 2)))
case("ckpt_empty", "refused", "--resume from a zero-byte last.pt", ("last.pt",), check=_finished_run_intact)(
    _resume_damaged(lambda p: os.truncate(p, 0))
)
case(
    "ckpt_text_file", "refused", "--resume from a last.pt that is a text file", ("last.pt",), check=_finished_run_intact
)(_resume_damaged(lambda p: p.write_text("this is not a checkpoint\n" * 100)))


def payload_not_run(pr: Probe, d: Path, o: Outcome) -> str | None:
    if (d / "payload_ran").exists():
        return "the pickle payload ran"
    if "weights_only=False" in o.stderr:
        return "the message suggests weights_only=False"
    return None


_PAYLOAD = """
import sys, torch
class P:
    def __reduce__(self):
        return (open, (sys.argv[2], "w"))
torch.save({"format": "x", "model": P()}, sys.argv[1])
"""


def write_payload(pr: Probe, d: Path, target: Path) -> None:
    o = pr.run(["-c", _PAYLOAD, str(target), str(d / "payload_ran")], d)
    if o.rc != 0:
        raise RuntimeError(o.stderr)


@case(
    "ckpt_pickle_payload",
    "refused",
    "--resume from a last.pt holding a pickle payload",
    ("last.pt",),
    check=payload_not_run,
)
def _(pr, d):
    run = pr.copy_run(d)
    write_payload(pr, d, run / "checkpoints" / "last.pt")
    return pr.train_lm(d, f"out_dir={run}", "--resume", str(run))
