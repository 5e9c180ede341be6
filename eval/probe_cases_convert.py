"""Fault-probe cases: compress and convert (damaged checkpoints, model folders, bad destinations and options)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from compressmamba.eval.probe_cases_runs import payload_not_run, resumed_to, write_payload
from compressmamba.eval.probe_core import (
    LM,
    Probe,
    case,
    damage_file,
)


@case("compress_damaged_ckpt", "refused", "compress a run whose last.pt is damaged mid-file", ("last.pt",))
def _(pr, d):
    run = pr.copy_run(d)
    damage_file(run / "checkpoints" / "last.pt", 0.5, os.urandom(4096))
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
    check=payload_not_run,
)
def _(pr, d):
    m = _model_folder(pr, d)
    (m / "model.safetensors").unlink()
    write_payload(pr, d, m / "pytorch_model.bin")
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
    check=resumed_to(8),
)
def _(pr, d):
    run = pr.copy_run(d)
    damage_file(run / "checkpoints" / "last.pt", 0.5, os.urandom(4096))
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
