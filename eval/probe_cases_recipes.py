"""Fault-probe cases: recipes and overrides, train and study arguments, and the data section's files."""

from __future__ import annotations

import os
from pathlib import Path

from compressmamba.eval.probe_core import (
    LM,
    TINY_LM,
    Outcome,
    Probe,
    case,
    lm_override,
    write_recipe,
)

# recipes and overrides -----------------------------------------------------------------------------
lm_override("model.expand=abc", ("model.expand", "abc"), "expand_abc", "model.expand=abc")
lm_override("model.expand=0", ("model.expand", "0"), "expand_zero", "model.expand=0")
lm_override("train=5", ("train", "5"), "section_scalar", "train=5 (a section given as a scalar)")
lm_override("model=5", ("model",), "model_section_scalar", "model=5 (the model section as a scalar)")
lm_override("train.stepz=5", ("stepz", "train"), "unknown_key", "train.stepz=5 (a misspelt key)")
lm_override("bogus=1", ("bogus",), "unknown_top_key", "bogus=1 (an unknown top-level key)")
lm_override("model.dmodel=32", ("dmodel", "model"), "unknown_model_key", "model.dmodel=32")
lm_override("train.steps=-5", ("train.steps", "-5"), "steps_negative", "train.steps=-5")
lm_override("train.steps=0", ("train.steps", "0"), "steps_zero", "train.steps=0")
lm_override("train.steps=abc", ("train.steps", "abc"), "steps_abc", "train.steps=abc")
lm_override("train.steps=2.5", ("train.steps", "2.5"), "steps_fraction", "train.steps=2.5")
lm_override("optim.lr=nan", ("optim.lr", "nan"), "lr_nan", "optim.lr=nan")
lm_override("optim.lr=inf", ("optim.lr", "inf"), "lr_inf", "optim.lr=inf")
lm_override("optim.lr=-0.1", ("optim.lr", "-0.1"), "lr_negative", "optim.lr=-0.1")
lm_override("train.mixed_precision=fp16", ("fp16",), "fp16_cpu", "train.mixed_precision=fp16 on the CPU")
lm_override(
    "train.mixed_precision=fp8",
    ("train.mixed_precision", "fp8"),
    "mixed_precision_unknown",
    "train.mixed_precision=fp8",
)
lm_override("train.batch_size=0", ("train.batch_size", "0"), "batch_size_zero", "train.batch_size=0")
lm_override("train.grad_accum=0", ("train.grad_accum", "0"), "grad_accum_zero", "train.grad_accum=0")
lm_override("reduction.tau=2", ("reduction.tau", "2"), "tau_out_of_range", "reduction.tau=2")
lm_override(
    "reduction.mode=sometimes", ("reduction.mode", "sometimes"), "reduction_mode_unknown", "reduction.mode=sometimes"
)
lm_override("seed=-1", ("seed", "-1"), "seed_negative", "seed=-1")
lm_override("model.name=transformer", ("model.name", "transformer"), "model_name_unknown", "model.name=transformer")
lm_override("data.name=imagenet", ("data.name", "imagenet"), "data_name_unknown", "data.name=imagenet")
lm_override(
    "model.state_size=[8,8]", ("state_size",), "state_sizes_wrong_length", "model.state_size=[8,8] for a 1-layer model"
)
lm_override("train.steps=[1,", ("train.steps",), "override_bad_yaml", "train.steps=[1, (unclosed YAML)")
lm_override("train.steps", ("train.steps",), "override_without_value", "train.steps (no =value)")
lm_override("data.max_bytes=abc", ("data.max_bytes", "abc"), "max_bytes_abc", "data.max_bytes=abc")
lm_override("data.seq_len=0", ("data.seq_len", "0"), "seq_len_zero", "data.seq_len=0")
lm_override("data.corpus=no_such_corpus", ("no_such_corpus",), "corpus_unknown", "data.corpus=no_such_corpus")
lm_override("data.val_fraction=1.5", ("val_fraction", "1.5"), "val_fraction_out_of_range", "data.val_fraction=1.5")


@case("yaml_syntax_error", "refused", "a recipe file with a YAML syntax error", ("recipe.yaml", "line"), cheap=True)
def _(pr, d):
    r = write_recipe(d, "name: x\nmodel: {name: mamba, d_model: 16\ntrain: [steps: 3\n")
    return pr.cli(d, "train", str(r))


@case("recipe_not_mapping", "refused", "a recipe file that holds a list", ("recipe.yaml",), cheap=True)
def _(pr, d):
    return pr.cli(d, "train", str(write_recipe(d, "- a\n- b\n")))


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
