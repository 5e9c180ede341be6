"""Fault-probe cases: whole training runs (divergence, SIGKILL then resume, sMNIST) and evaluate."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from compressmamba.eval.probe_core import (
    CASE_TIMEOUT_S,
    LM,
    SMNIST,
    TINY_LM,
    TINY_SMNIST,
    Outcome,
    Probe,
    case,
)


# training faults -----------------------------------------------------------------------------------
def _no_nan_carried(pr: Probe, d: Path, o: Outcome) -> str | None:
    m = d / "run" / "metrics.jsonl"
    if m.is_file() and "NaN" in m.read_text():
        return "metrics.jsonl holds NaN rows"
    return None


@case("lr_divergent", "refused", "optim.lr=1e6 (training diverges)", ("lr",), check=_no_nan_carried)
def _(pr, d):
    return pr.train_lm(
        d, "optim.lr=1e6", "optim.grad_clip=null", "train.steps=20", "reduction.mode=none", f"out_dir={d / 'run'}"
    )


def _resumed_finished(pr: Probe, d: Path, o: Outcome) -> str | None:
    if not (d / "run" / "summary.json").is_file():
        return "the resumed run wrote no summary.json"
    return None


@case(
    "sigkill_then_resume",
    "succeeds",
    "SIGKILL a run after its first checkpoint, then --resume it",
    check=_resumed_finished,
)
def _(pr, d):
    run = d / "run"
    args = [
        sys.executable,
        "-m",
        "compressmamba",
        "train",
        LM,
        *TINY_LM,
        "train.steps=40",
        "train.checkpoint_every=2",
        f"out_dir={run}",
    ]
    p = subprocess.Popen(args, cwd=d, env=pr.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + CASE_TIMEOUT_S
        while p.poll() is None and time.monotonic() < deadline:
            if (run / "checkpoints" / "last.pt").is_file():
                p.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
    killed = p.returncode == -signal.SIGKILL
    o = pr.train_lm(d, "train.steps=40", "train.checkpoint_every=2", f"out_dir={run}", "--resume", str(run))
    o.note = "killed after its first checkpoint, resumed to the end" if killed else "(the run ended before the kill)"
    return o


def _preempted_then_finished(pr: Probe, d: Path, o: Outcome) -> str | None:
    first = (d / "first_rc.txt").read_text().split("\n", 1)
    if first[0] not in ("75", "0"):
        return f"SIGTERM gave exit {first[0]}, expected 75 (preempted, resume me): {first[1][-300:]}"
    return _resumed_finished(pr, d, o)


@case(
    "sigterm_then_resume",
    "succeeds",
    "SIGTERM a run mid-way (exit 75 with a checkpoint at that step), then --resume it",
    check=_preempted_then_finished,
)
def _(pr, d):
    run, steps = d / "run", ["train.steps=400", "train.checkpoint_every=1000", "train.log_every=1"]
    args = [sys.executable, "-m", "compressmamba", "train", LM, *TINY_LM, *steps, f"out_dir={run}"]
    p = subprocess.Popen(args, cwd=d, env=pr.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + CASE_TIMEOUT_S
    while p.poll() is None and time.monotonic() < deadline:
        if (run / "metrics.jsonl").is_file() and '"kind": "train"' in (run / "metrics.jsonl").read_text():
            p.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    err = p.communicate(timeout=CASE_TIMEOUT_S)[1]
    (d / "first_rc.txt").write_text(f"{p.returncode}\n{err}")
    o = pr.train_lm(d, *steps, f"out_dir={run}", "--resume", str(run))
    said = [x for x in err.splitlines() if "preempted" in x]
    o.note = said[-1].split(": ", 1)[-1] if said else "(the run ended before the signal)"
    return o


@case("smnist_tiny_ok", "succeeds", "the sMNIST demo with tiny settings (a run that should simply work)")
def _(pr, d):
    return pr.cli(d, "train", SMNIST, *TINY_SMNIST, f"out_dir={d / 'run'}")


@case(
    "evaluate_missing_model", "refused", "evaluate a model folder that does not exist", ("no_such_model",), cheap=True
)
def _(pr, d):
    return pr.cli(d, "evaluate", str(d / "no_such_model"), "--tasks", "lambada_openai")
