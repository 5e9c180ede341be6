"""The machinery of the fault probe (``python -m compressmamba.eval.probe_faults``): the tiny recipes,
what a case saw (:class:`Outcome`), the case registry (:data:`CASES`, :func:`case`), the :class:`Probe`
that runs the command line in subprocesses and builds the shared fixtures, and the classification
and table of the results. The cases themselves live in ``probe_cases_*.py``; ``probe_faults`` imports
them (which registers them, in order) and holds ``main``."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

LM = "lm/stdlib_demo"
# a byte-level Mamba small enough that a run of a few steps takes seconds on one core
TINY_LM = [
    "model.d_model=16",
    "model.n_layers=1",
    "model.state_size=8",
    "data.max_bytes=100000",
    "data.seq_len=32",
    "train.steps=6",
    "train.batch_size=2",
    "train.eval_every=3",
    "train.eval_batches=1",
    "train.log_every=2",
    "train.progress=false",
    "reduction.n_attempts=1",
    "reduction.calib_batches=1",
]
SMNIST = "smnist/demo"
TINY_SMNIST = [
    "model.d_model=8",
    "model.state_size=8",
    "model.n_layers=1",
    "train.steps=4",
    "train.batch_size=4",
    "train.eval_every=2",
    "train.eval_batches=1",
    "train.log_every=2",
    "train.progress=false",
    "reduction.n_attempts=1",
]
CASE_TIMEOUT_S = 600


@dataclass
class Outcome:
    rc: int | None
    stdout: str
    stderr: str
    note: str = ""  # what a succeeding case did, for the table


@dataclass
class Case:
    name: str
    expect: str  # "refused" (nonzero exit, one line, no traceback), "succeeds", or "either" (refused, or
    # succeeds with what ``check`` asks for, e.g. a damaged token store rebuilt and said so)
    what: str  # what the careful user tries, in words
    fn: Callable[[Probe, Path], Outcome]
    needles: tuple[str, ...] = ()  # a refusal's message must name each of these
    check: Callable[[Probe, Path, Outcome], str | None] | None = None  # extra check: None or why it is BAD
    cheap: bool = False  # refused before any data or training: a few seconds (the pytest subset)


@dataclass
class Result:
    case: str
    expect: str
    outcome: str  # OK | BAD
    message: str
    why: str = ""
    seconds: float = 0.0


@dataclass
class Probe:
    out: Path
    _run: Path | None = field(default=None, repr=False)
    _store_recipe: Path | None = field(default=None, repr=False)

    @property
    def cache(self) -> Path:
        return self.out / "cache"

    def env(self) -> dict:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "COMPRESSMAMBA_CACHE": str(self.cache)}
        env.pop("WORLD_SIZE", None)
        env["HF_HUB_OFFLINE"] = "1"  # a case never reaches the network
        env["TOKENIZERS_PARALLELISM"] = "false"
        return env

    def run(self, args: list[str], cwd: Path, timeout: float = CASE_TIMEOUT_S) -> Outcome:
        try:
            p = subprocess.run(
                [sys.executable, *args], cwd=cwd, env=self.env(), capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as e:
            return Outcome(None, _text(e.stdout), _text(e.stderr) + f"\n(timed out after {timeout:.0f} s)")
        return Outcome(p.returncode, p.stdout, p.stderr)

    def cli(self, cwd: Path, *args: str, timeout: float = CASE_TIMEOUT_S) -> Outcome:
        return self.run(["-m", "compressmamba", *args], cwd, timeout)

    def train_lm(self, cwd: Path, *extra: str, recipe: str = LM) -> Outcome:
        return self.cli(cwd, "train", recipe, *TINY_LM, *extra)

    def finished_run(self) -> Path:
        """A finished tiny LM run (built once); cases copy it before they touch it."""
        if self._run is None:
            where = self.out / "fixtures" / "lm_run"
            if not (where / "summary.json").is_file():
                shutil.rmtree(where, ignore_errors=True)
                o = self.train_lm(self.out, f"out_dir={where}")
                if o.rc != 0:
                    raise RuntimeError(f"the fixture run failed (exit {o.rc}):\n{o.stderr[-3000:]}")
            self._run = where
        return self._run

    def copy_run(self, case_dir: Path) -> Path:
        dst = case_dir / "run"
        shutil.copytree(self.finished_run(), dst)
        return dst

    def tokens_bin(self) -> Path:
        """The token store the tiny LM recipe trains on (built with the fixture run)."""
        self.finished_run()
        found = [
            m.parent / "tokens.bin"
            for m in sorted(self.cache.glob("**/python_stdlib_*/manifest.json"))
            if json.loads(m.read_text())["inputs"].get("max_bytes") == 100000  # TINY_LM's slice
        ]
        if len(found) != 1:
            raise RuntimeError(f"expected one token store under {self.cache}, found {found}")
        return found[0]


def _text(b) -> str:
    if b is None:
        return ""
    return b.decode(errors="replace") if isinstance(b, bytes) else b


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def write_recipe(case_dir: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = case_dir / name
    path.write_text(text)
    return path


def damage_file(path: Path, offset_frac: float, data: bytes) -> None:
    """Overwrite ``data`` at ``offset_frac`` of ``path``'s size, keeping the size."""
    size = path.stat().st_size
    at = max(0, min(size - len(data), int(size * offset_frac)))
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data[: size - at])


# --- the cases -----------------------------------------------------------------------------------
CASES: list[Case] = []


def case(name, expect, what, needles=(), check=None, cheap=False):
    def deco(fn):
        CASES.append(Case(name, expect, what, fn, tuple(needles), check, cheap))
        return fn

    return deco


def lm_override(key_value: str, needles, name: str, what: str, cheap: bool = True):
    """A case: the tiny LM recipe with one bad override, refused before any training."""

    def fn(pr: Probe, d: Path) -> Outcome:
        return pr.train_lm(d, key_value, f"out_dir={d / 'run'}")

    case(name, "refused", what, needles, cheap=cheap)(fn)


# --- classification --------------------------------------------------------------------------------
def message_line(o: Outcome) -> str:
    """The line a user reads: the last 'error' line of stderr, else its last non-empty line."""
    lines = [x.strip() for x in o.stderr.splitlines() if x.strip() and "it/s]" not in x and "s/it]" not in x]
    errs = [x for x in lines if "error" in x.lower()]
    if errs:
        return errs[-1]
    if lines:
        return lines[-1]
    out = [x.strip() for x in o.stdout.splitlines() if x.strip()]
    return out[-1] if out else ""


def classify(c: Case, o: Outcome, extra: str | None, case_dir: Path | None = None) -> tuple[str, str]:
    """(OK | BAD, why) for what case ``c`` saw. A needle must be in the message itself, not in the
    case folder's path (``case_dir``), which holds the case's name."""
    if o.rc is None:
        return "BAD", "timed out"
    if "Traceback (most recent call last)" in o.stderr:
        return "BAD", "raw traceback"
    if c.expect in ("refused", "either"):
        if o.rc == 0 and not extra and c.expect == "refused":
            return "BAD", "accepted in silence (exit 0)"
        if o.rc != 0:
            msg = message_line(o)
            if case_dir is not None:
                msg = msg.replace(str(case_dir), "DIR")
            missing = [n for n in c.needles if n.lower() not in msg.lower()]
            if missing:
                return "BAD", f"the message does not name {missing}"
    elif o.rc != 0:
        return "BAD", f"exit {o.rc}, expected success"
    if extra:
        return "BAD", extra
    return "OK", ""


def run_case(pr: Probe, c: Case) -> Result:
    d = pr.out / "cases" / c.name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    t0 = time.monotonic()
    o = c.fn(pr, d)
    (d / "stdout.txt").write_text(o.stdout)
    (d / "stderr.txt").write_text(o.stderr)
    extra = c.check(pr, d, o) if c.check else None
    outcome, why = classify(c, o, extra, d)
    if c.expect != "refused" and o.rc == 0:
        said = [x.strip() for x in o.stderr.splitlines() if x.startswith("compressmamba:")]
        msg = f"exit 0{': ' + (o.note or said[0]) if o.note or said else ''}"
    else:
        msg = message_line(o)
    msg = msg.replace(str(d), "DIR").replace(str(pr.out), "OUT")
    return Result(c.name, c.expect, outcome, msg, why, time.monotonic() - t0)


def table(results: list[Result], width: int = 150) -> str:
    rows = ["| case | expected | outcome | first line of the message |", "|---|---|---|---|"]
    for r in results:
        msg = r.message if r.outcome == "OK" else f"{r.why} — {r.message}"
        msg = msg.replace("|", "\\|")
        if len(msg) > width:
            msg = msg[: width - 1] + "…"
        rows.append(f"| {r.case} | {r.expect} | {r.outcome} | {msg} |")
    ok = sum(r.outcome == "OK" for r in results)
    rows.append("")
    rows.append(f"{len(results)} cases: {ok} OK, {len(results) - ok} BAD")
    return "\n".join(rows)


def machine() -> str:
    import accelerate
    import torch
    import transformers

    import compressmamba

    return (
        f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}, "
        f"compressmamba {compressmamba.__version__}"
    )
