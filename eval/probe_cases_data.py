"""Fault-probe cases: the token store (damaged, truncated) and prepare-data."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from compressmamba.eval.probe_core import (
    SMNIST,
    Outcome,
    Probe,
    case,
    damage_file,
)


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
    damage_file(p, 0.5, bytes(range(256)) * 16)


def _out_of_vocab(p: Path) -> None:  # uint16 0xffff: far outside a byte vocabulary
    damage_file(p, 0.5, b"\xff" * 4096)


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
