"""Bad inputs and faults, tried as a careful user would (issue 25's probe, kept in the repository).

Every case runs the command line in a subprocess against the demo recipes with tiny settings (a
few steps, a small slice of the corpus) and classifies what it saw:

* **OK**: the bad input is refused (exit status nonzero) by one line that names what the case
  names (the key or file, often the value and the fix) and no Python traceback; or, where success
  is right, the command succeeds and leaves what it should (a finished run intact, a repair
  reported, an old run cleared before a new one).
* **BAD**: anything else: a bad input accepted in silence, a raw traceback, a finished run
  destroyed, a NaN carried on, a command that hangs.

    python -m compressmamba.eval.probe_faults --out /tmp/probe      # every case; a table; exit 1 on BAD
    python -m compressmamba.eval.probe_faults --out /tmp/probe --cases expand_abc,fp16_cpu
    python -m compressmamba.eval.probe_faults --list

Everything a case writes (run folders, the token stores of the tiny corpora) stays under ``--out``
(``COMPRESSMAMBA_CACHE`` points there), each case in its own folder; one finished run and one
token store are built once and copied for the cases that damage them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
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


def _file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _write_recipe(case_dir: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = case_dir / name
    path.write_text(text)
    return path


def _damage(path: Path, offset_frac: float, data: bytes) -> None:
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


def _lm_override(key_value: str, needles, name: str, what: str, cheap: bool = True):
    """A case: the tiny LM recipe with one bad override, refused before any training."""

    def fn(pr: Probe, d: Path) -> Outcome:
        return pr.train_lm(d, key_value, f"out_dir={d / 'run'}")

    case(name, "refused", what, needles, cheap=cheap)(fn)


# run folders -------------------------------------------------------------------------------------
def _finished_run_intact(pr: Probe, d: Path, o: Outcome) -> str | None:
    before = json.loads((d / "hashes.json").read_text())
    after = _file_hashes(d / "run")
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
    (d / "hashes.json").write_text(json.dumps(_file_hashes(run)))
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
    (d / "hashes.json").write_text(json.dumps({"metrics.jsonl": _file_hashes(run)["metrics.jsonl"]}))
    return pr.train_lm(d, f"out_dir={run}", "--resume", str(run))


def _resumed_to(steps: int):
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
    check=_resumed_to(8),
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
    (d / "hashes.json").write_text(json.dumps(_file_hashes(run)))
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
    (d / "hashes.json").write_text(json.dumps(_file_hashes(run)))
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
    (d / "hashes.json").write_text(json.dumps(_file_hashes(run)))
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


# checkpoints ---------------------------------------------------------------------------------------
def _resume_damaged(damage: Callable[[Path], None]):
    def fn(pr: Probe, d: Path) -> Outcome:
        run = pr.copy_run(d)
        damage(run / "checkpoints" / "last.pt")
        (d / "hashes.json").write_text(json.dumps({"checkpoints/prev.pt": _file_hashes(run)["checkpoints/prev.pt"]}))
        return pr.train_lm(d, f"out_dir={run}", "train.steps=8", "--resume", str(run), "--allow-recipe-change")

    return fn


case(
    "ckpt_overwritten_same_size",
    "refused",
    "--resume from last.pt with 4 KiB overwritten mid-file (same size)",
    ("last.pt", "prev.pt"),
    check=_finished_run_intact,
)(_resume_damaged(lambda p: _damage(p, 0.5, os.urandom(4096))))
case(
    "ckpt_truncated", "refused", "--resume from last.pt cut to half its size", ("last.pt",), check=_finished_run_intact
)(_resume_damaged(lambda p: os.truncate(p, p.stat().st_size // 2)))
case("ckpt_empty", "refused", "--resume from a zero-byte last.pt", ("last.pt",), check=_finished_run_intact)(
    _resume_damaged(lambda p: os.truncate(p, 0))
)
case(
    "ckpt_text_file", "refused", "--resume from a last.pt that is a text file", ("last.pt",), check=_finished_run_intact
)(_resume_damaged(lambda p: p.write_text("this is not a checkpoint\n" * 100)))


def _payload_not_run(pr: Probe, d: Path, o: Outcome) -> str | None:
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


def _write_payload(pr: Probe, d: Path, target: Path) -> None:
    o = pr.run(["-c", _PAYLOAD, str(target), str(d / "payload_ran")], d)
    if o.rc != 0:
        raise RuntimeError(o.stderr)


@case(
    "ckpt_pickle_payload",
    "refused",
    "--resume from a last.pt holding a pickle payload",
    ("last.pt",),
    check=_payload_not_run,
)
def _(pr, d):
    run = pr.copy_run(d)
    _write_payload(pr, d, run / "checkpoints" / "last.pt")
    return pr.train_lm(d, f"out_dir={run}", "--resume", str(run))


@case("compress_damaged_ckpt", "refused", "compress a run whose last.pt is damaged mid-file", ("last.pt",))
def _(pr, d):
    run = pr.copy_run(d)
    _damage(run / "checkpoints" / "last.pt", 0.5, os.urandom(4096))
    return pr.cli(d, "compress", str(run), "--tau", "0.05", "--out", str(d / "small"), *_calib(d))


@case("convert_damaged_ckpt", "refused", "convert a run whose last.pt is truncated", ("last.pt",))
def _(pr, d):
    run = pr.copy_run(d)
    p = run / "checkpoints" / "last.pt"
    os.truncate(p, p.stat().st_size - 100)
    return pr.cli(d, "convert", str(run), str(d / "out"))


def _calib(d: Path) -> list[str]:
    """compress's calibration options: a small text file of the case's own."""
    for i in range(3):
        (d / f"calib{i}.txt").write_text(f"def f{i}(x):\n    return x + {i}\n" * 200)
    return ["--calib", f"{d}/calib*.txt", "--seq-len", "32", "--calib-batches", "2", "--batch-size", "2"]


# model folders -------------------------------------------------------------------------------------
def _model_folder(pr: Probe, d: Path) -> Path:
    dst = d / "model"
    shutil.copytree(pr.finished_run() / "model", dst)
    return dst


@case(
    "model_pickle_payload_bin",
    "refused",
    "convert a model folder whose pytorch_model.bin carries a pickle payload",
    ("pytorch_model.bin",),
    check=_payload_not_run,
)
def _(pr, d):
    m = _model_folder(pr, d)
    (m / "model.safetensors").unlink()
    _write_payload(pr, d, m / "pytorch_model.bin")
    return pr.cli(d, "convert", str(m), str(d / "out"))


@case(
    "model_safetensors_truncated",
    "refused",
    "convert a model folder whose model.safetensors is truncated",
    ("model.safetensors",),
)
def _(pr, d):
    m = _model_folder(pr, d)
    p = m / "model.safetensors"
    os.truncate(p, p.stat().st_size // 2)
    return pr.cli(d, "convert", str(m), str(d / "out"))


@case("model_config_not_json", "refused", "convert a model folder whose config.json is not JSON", ("config.json",))
def _(pr, d):
    m = _model_folder(pr, d)
    (m / "config.json").write_text("{not json")
    return pr.cli(d, "convert", str(m), str(d / "out"))


@case("convert_missing_folder", "refused", "convert a folder that does not exist", ("no_such_model",), cheap=True)
def _(pr, d):
    return pr.cli(d, "convert", str(d / "no_such_model"), str(d / "out"))


@case("convert_non_model_folder", "refused", "convert a folder that holds no model", ("not_a_model",), cheap=True)
def _(pr, d):
    (d / "not_a_model").mkdir()
    (d / "not_a_model" / "readme.txt").write_text("hello")
    return pr.cli(d, "convert", str(d / "not_a_model"), str(d / "out"))


@case("compress_missing_folder", "refused", "compress a folder that does not exist", ("no_such_model",), cheap=True)
def _(pr, d):
    return pr.cli(d, "compress", str(d / "no_such_model"), "--tau", "0.05", "--out", str(d / "small"))


@case("compress_non_model_folder", "refused", "compress a folder that holds no model", ("not_a_model",), cheap=True)
def _(pr, d):
    (d / "not_a_model").mkdir()
    return pr.cli(d, "compress", str(d / "not_a_model"), "--tau", "0.05", "--out", str(d / "small"))


@case("compress_tau_out_of_range", "refused", "compress with --tau 1.5", ("--tau", "1.5"))
def _(pr, d):
    return pr.cli(d, "compress", str(pr.finished_run()), "--tau", "1.5", "--out", str(d / "small"), *_calib(d))


@case(
    "resume_from_prev_after_damage",
    "succeeds",
    "follow the damaged-checkpoint message: --resume RUN/checkpoints/prev.pt",
    check=_resumed_to(8),
)
def _(pr, d):
    run = pr.copy_run(d)
    _damage(run / "checkpoints" / "last.pt", 0.5, os.urandom(4096))
    prev = run / "checkpoints" / "prev.pt"
    return pr.train_lm(d, f"out_dir={run}", "train.steps=8", "--resume", str(prev), "--allow-recipe-change")


@case("convert_dst_is_file", "refused", "convert a finished run to a destination that is a file", ("dst_file",))
def _(pr, d):
    (d / "dst_file").write_text("mine")
    return pr.cli(d, "convert", str(pr.finished_run()), str(d / "dst_file"))


@case("compress_out_is_file", "refused", "compress to an --out that is a file", ("out_file",))
def _(pr, d):
    (d / "out_file").write_text("mine")
    return pr.cli(d, "compress", str(pr.finished_run()), "--tau", "0.05", "--out", str(d / "out_file"), *_calib(d))


@case(
    "recipes_copy_over_existing",
    "refused",
    "recipes copy onto a recipe already there (an edited copy)",
    ("stdlib_demo.yaml", "exists"),
    cheap=True,
)
def _(pr, d):
    (d / "stdlib_demo.yaml").write_text("name: my edits\n")
    return pr.cli(d, "recipes", "copy", LM, str(d))


@case("compress_run_ok", "succeeds", "compress a finished run on a small calibration corpus")
def _(pr, d):
    return pr.cli(d, "compress", str(pr.finished_run()), "--tau", "0.05", "--out", str(d / "small"), *_calib(d))


@case("convert_run_ok", "succeeds", "convert a finished run to a transformers folder")
def _(pr, d):
    return pr.cli(d, "convert", str(pr.finished_run()), str(d / "out"), "--to", "transformers")


# the token store -------------------------------------------------------------------------------
def _train_on_damaged_store(damage: Callable[[Path], None]):
    def fn(pr: Probe, d: Path) -> Outcome:
        tokens = pr.tokens_bin()
        saved = d / "tokens.bin.orig"
        shutil.copy2(tokens, saved)
        try:
            damage(tokens)
            return pr.train_lm(d, f"out_dir={d / 'run'}")
        finally:
            os.replace(saved, tokens)  # the store as it was, for the cases after this one

    return fn


def _refused_or_rebuilt(pr: Probe, d: Path, o: Outcome) -> str | None:
    if o.rc == 0 and "token store" not in (o.stderr + o.stdout).lower():
        return "trained on the damaged store without a word"
    return None


def _in_vocab(p: Path) -> None:  # byte tokenizer: ids 0..255 are in the vocabulary
    _damage(p, 0.5, bytes(range(256)) * 16)


def _out_of_vocab(p: Path) -> None:  # uint16 0xffff: far outside a byte vocabulary
    _damage(p, 0.5, b"\xff" * 4096)


case(
    "tokens_overwritten_in_vocab",
    "either",
    "tokens.bin overwritten mid-file at the same size, in-vocabulary ids",
    ("tokens.bin",),
    check=_refused_or_rebuilt,
)(_train_on_damaged_store(_in_vocab))
case(
    "tokens_overwritten_out_of_vocab",
    "either",
    "tokens.bin overwritten mid-file at the same size, out-of-vocabulary ids",
    ("tokens.bin",),
    check=_refused_or_rebuilt,
)(_train_on_damaged_store(_out_of_vocab))


@case("tokens_truncated", "succeeds", "tokens.bin truncated: the store is rebuilt (it no longer matches its manifest)")
def _(pr, d):
    tokens = pr.tokens_bin()
    saved = d / "tokens.bin.orig"
    shutil.copy2(tokens, saved)
    try:
        os.truncate(tokens, tokens.stat().st_size // 2)
        return pr.train_lm(d, f"out_dir={d / 'run'}")
    finally:
        if not tokens.is_file() or tokens.stat().st_size != saved.stat().st_size:
            os.replace(saved, tokens)


@case(
    "prepare_data_non_text", "refused", "prepare-data on the sMNIST recipe (no token store)", ("data.name",), cheap=True
)
def _(pr, d):
    return pr.cli(d, "prepare-data", SMNIST)


# recipes and overrides -----------------------------------------------------------------------------
_lm_override("model.expand=abc", ("model.expand", "abc"), "expand_abc", "model.expand=abc")
_lm_override("model.expand=0", ("model.expand", "0"), "expand_zero", "model.expand=0")
_lm_override("train=5", ("train", "5"), "section_scalar", "train=5 (a section given as a scalar)")
_lm_override("model=5", ("model",), "model_section_scalar", "model=5 (the model section as a scalar)")
_lm_override("train.stepz=5", ("stepz", "train"), "unknown_key", "train.stepz=5 (a misspelt key)")
_lm_override("bogus=1", ("bogus",), "unknown_top_key", "bogus=1 (an unknown top-level key)")
_lm_override("model.dmodel=32", ("dmodel", "model"), "unknown_model_key", "model.dmodel=32")
_lm_override("train.steps=-5", ("train.steps", "-5"), "steps_negative", "train.steps=-5")
_lm_override("train.steps=0", ("train.steps", "0"), "steps_zero", "train.steps=0")
_lm_override("train.steps=abc", ("train.steps", "abc"), "steps_abc", "train.steps=abc")
_lm_override("train.steps=2.5", ("train.steps", "2.5"), "steps_fraction", "train.steps=2.5")
_lm_override("optim.lr=nan", ("optim.lr", "nan"), "lr_nan", "optim.lr=nan")
_lm_override("optim.lr=inf", ("optim.lr", "inf"), "lr_inf", "optim.lr=inf")
_lm_override("optim.lr=-0.1", ("optim.lr", "-0.1"), "lr_negative", "optim.lr=-0.1")
_lm_override("train.mixed_precision=fp16", ("fp16",), "fp16_cpu", "train.mixed_precision=fp16 on the CPU")
_lm_override(
    "train.mixed_precision=fp8",
    ("train.mixed_precision", "fp8"),
    "mixed_precision_unknown",
    "train.mixed_precision=fp8",
)
_lm_override("train.batch_size=0", ("train.batch_size", "0"), "batch_size_zero", "train.batch_size=0")
_lm_override("train.grad_accum=0", ("train.grad_accum", "0"), "grad_accum_zero", "train.grad_accum=0")
_lm_override("reduction.tau=2", ("reduction.tau", "2"), "tau_out_of_range", "reduction.tau=2")
_lm_override(
    "reduction.mode=sometimes", ("reduction.mode", "sometimes"), "reduction_mode_unknown", "reduction.mode=sometimes"
)
_lm_override("seed=-1", ("seed", "-1"), "seed_negative", "seed=-1")
_lm_override("model.name=transformer", ("model.name", "transformer"), "model_name_unknown", "model.name=transformer")
_lm_override("data.name=imagenet", ("data.name", "imagenet"), "data_name_unknown", "data.name=imagenet")
_lm_override(
    "model.state_size=[8,8]", ("state_size",), "state_sizes_wrong_length", "model.state_size=[8,8] for a 1-layer model"
)
_lm_override("train.steps=[1,", ("train.steps",), "override_bad_yaml", "train.steps=[1, (unclosed YAML)")
_lm_override("train.steps", ("train.steps",), "override_without_value", "train.steps (no =value)")
_lm_override("data.max_bytes=abc", ("data.max_bytes", "abc"), "max_bytes_abc", "data.max_bytes=abc")
_lm_override("data.seq_len=0", ("data.seq_len", "0"), "seq_len_zero", "data.seq_len=0")
_lm_override("data.corpus=no_such_corpus", ("no_such_corpus",), "corpus_unknown", "data.corpus=no_such_corpus")
_lm_override("data.val_fraction=1.5", ("val_fraction", "1.5"), "val_fraction_out_of_range", "data.val_fraction=1.5")


@case("yaml_syntax_error", "refused", "a recipe file with a YAML syntax error", ("recipe.yaml", "line"), cheap=True)
def _(pr, d):
    r = _write_recipe(d, "name: x\nmodel: {name: mamba, d_model: 16\ntrain: [steps: 3\n")
    return pr.cli(d, "train", str(r))


@case("recipe_not_mapping", "refused", "a recipe file that holds a list", ("recipe.yaml",), cheap=True)
def _(pr, d):
    return pr.cli(d, "train", str(_write_recipe(d, "- a\n- b\n")))


@case("recipe_missing_file", "refused", "train a recipe file that does not exist", ("no_such_recipe",), cheap=True)
def _(pr, d):
    return pr.cli(d, "train", str(d / "no_such_recipe.yaml"))


@case("recipe_is_folder", "refused", "train a folder instead of a recipe file", ("a_folder",), cheap=True)
def _(pr, d):
    (d / "a_folder").mkdir()
    return pr.cli(d, "train", str(d / "a_folder"))


@case("recipe_binary_file", "refused", "train a binary file as a recipe", ("recipe.yaml",), cheap=True)
def _(pr, d):
    r = d / "recipe.yaml"
    r.write_bytes(b"\x00\xff\xfe\x89PNG\r\n" + os.urandom(256))
    return pr.cli(d, "train", str(r))


@case("train_bad_seeds", "refused", "train --seeds 0,x", ("--seeds", "0,x"), cheap=True)
def _(pr, d):
    return pr.train_lm(d, "--seeds", "0,x")


@case("study_bad_seeds", "refused", "the study with --seeds 4-x", ("--seeds", "4-x"), cheap=True)
def _(pr, d):
    return pr.run(["-m", "compressmamba.eval.mamba_study", LM, *TINY_LM, "--seeds", "4-x", "--out", str(d)], d)


@case("study_bad_arms", "refused", "the study with --arms compressed,bigger", ("bigger",), cheap=True)
def _(pr, d):
    return pr.run(
        ["-m", "compressmamba.eval.mamba_study", LM, *TINY_LM, "--arms", "compressed,bigger", "--out", str(d)], d
    )


@case("study_bad_override", "refused", "the study with model.expand=abc", ("model.expand", "abc"), cheap=True)
def _(pr, d):
    return pr.run(["-m", "compressmamba.eval.mamba_study", LM, *TINY_LM, "model.expand=abc", "--out", str(d)], d)


# data files ----------------------------------------------------------------------------------------
@case("data_path_missing", "refused", "data.files= a path that does not exist", ("no_such_dir",))
def _(pr, d):
    return pr.train_lm(d, "data.corpus=null", f"data.files={d / 'no_such_dir' / '*.txt'}", f"out_dir={d / 'run'}")


@case("data_files_empty", "refused", "data.files= an empty text file", ("empty.txt",))
def _(pr, d):
    (d / "empty.txt").write_text("")
    return pr.train_lm(d, "data.corpus=null", f"data.files={d / 'empty.txt'}", f"out_dir={d / 'run'}")


def _repairs_reported(pr: Probe, d: Path, o: Outcome) -> str | None:
    if "repaired" not in (o.stdout + o.stderr):
        return "trained on invalid UTF-8 without reporting the repairs"
    return None


@case(
    "binary_corpus",
    "succeeds",
    "train on a corpus of invalid UTF-8 and binary garbage (repairs reported)",
    check=_repairs_reported,
)
def _(pr, d):
    rng = __import__("random").Random(0)
    for i in range(4):
        (d / f"garbage{i}.txt").write_bytes(bytes(rng.randrange(256) for _ in range(30000)))
    return pr.train_lm(d, "data.corpus=null", f"data.files={d}/garbage*.txt", f"out_dir={d / 'run'}")


@case("seq_len_longer_than_data", "refused", "data.seq_len longer than the whole corpus", ("seq_len",))
def _(pr, d):
    for i in range(4):
        (d / f"small{i}.txt").write_text(f"print('hello {i}')\n" * 20)
    return pr.train_lm(d, "data.corpus=null", f"data.files={d}/small*.txt", "data.seq_len=4096", f"out_dir={d / 'run'}")


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


@case("smnist_tiny_ok", "succeeds", "the sMNIST demo with tiny settings (a run that should simply work)")
def _(pr, d):
    return pr.cli(d, "train", SMNIST, *TINY_SMNIST, f"out_dir={d / 'run'}")


@case(
    "evaluate_missing_model", "refused", "evaluate a model folder that does not exist", ("no_such_model",), cheap=True
)
def _(pr, d):
    return pr.cli(d, "evaluate", str(d / "no_such_model"), "--tasks", "lambada_openai")


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="a folder for the cases' files (created; reused fixtures are kept)")
    p.add_argument("--cases", help="comma-separated case names (default: all)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    args = p.parse_args(argv)
    by_name = {c.name: c for c in CASES}
    if args.list:
        for c in CASES:
            print(f"{c.name:32} {c.expect:9} {c.what}")
        return 0
    if args.out is None:
        p.error("--out DIR is required")
    chosen = CASES
    if args.cases:
        names = [n.strip() for n in args.cases.split(",") if n.strip()]
        unknown = [n for n in names if n not in by_name]
        if unknown:
            p.error(f"--cases: unknown case(s) {unknown}; --list shows them")
        chosen = [by_name[n] for n in names]
    args.out.mkdir(parents=True, exist_ok=True)
    pr = Probe(args.out.resolve())
    results = []
    for c in chosen:
        r = run_case(pr, c)
        print(f"{r.outcome:3} {r.case} ({r.seconds:.1f} s){': ' + r.why if r.why else ''}", file=sys.stderr, flush=True)
        results.append(r)
    text = table(results)
    print(text)
    (args.out / "table.md").write_text(f"{machine()}\n\n{text}\n")
    (args.out / "results.json").write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return 1 if any(r.outcome == "BAD" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
