"""Mamba-3 through the trainer: cuts while training (whole modes, Adam moments sliced), resume
of the cut shapes, and two ranks that cut identically."""

import json
from pathlib import Path

import pytest
import torch

from compressmamba.data.text import text_lm
from compressmamba.training import Trainer, recipe_from_dict
from compressmamba.training.metrics import read_metrics

MODEL = {"name": "mamba3", "d_model": 16, "n_layers": 2, "state_size": 12, "head_dim": 8, "n_groups": 2}


def _recipe(tmp_path, **model):
    return {
        "name": "lm-tiny-mamba3",
        "seed": 0,
        "out_dir": str(tmp_path / "run"),
        "model": {**MODEL, **model},
        "data": {"name": "text_lm", "corpus": "python_stdlib", "max_bytes": 60_000, "seq_len": 32},
        "optim": {"lr": 3e-3, "schedule": "cosine", "warmup_frac": 0.1},
        "train": {"steps": 12, "batch_size": 4, "eval_every": 6, "eval_batches": 2, "progress": False},
        "reduction": {"mode": "fixed", "fraction": 0.5, "method": "output", "attempts": [4, 8], "calib_batches": 2},
    }


@pytest.mark.parametrize("mimo", [False, True])
def test_mamba3_cuts_while_training_and_resumes(tmp_path, mimo):
    """N = 12 with S = 3 pairs: 9 modes; half of them kept twice (9 → 4 → 2 modes)."""
    recipe = _recipe(tmp_path, is_mimo=mimo, mimo_rank=2)
    tr = Trainer(recipe_from_dict(recipe))
    s = tr.fit()
    assert s["initial_state_sizes"] == [12, 12] and s["val_perplexity"] < 256
    cuts = [r for r in read_metrics(Path(tmp_path / "run" / "metrics.jsonl")) if r["kind"] == "cut"]
    assert [len(c["energies"][0]) for c in cuts] == [9, 4]  # one energy per mode
    assert cuts[0]["optimizer"]["sliced"] == 10 and cuts[0]["optimizer"]["dropped"] == 0  # 5 tensors per layer
    sizes, angles = tr.model.config.state_sizes, tr.model.config.rope_angles
    assert all(n - a == 2 for n, a in zip(sizes, angles))  # 2 modes left: a mode is a pair or one coordinate
    again = Trainer(recipe_from_dict(recipe), resume=tmp_path / "run")
    assert again.model.state_sizes == sizes and again.model.config.rope_angles == angles
    for a, b in zip(again.model.state_dict().values(), tr.model.state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu())


@pytest.mark.slow
def test_mamba3_two_ranks_cut_identically(tmp_path, two_ranks):
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(
        "name: ddp-mamba3\nseed: 2\n"
        f"out_dir: {tmp_path / 'run'}\n"
        f"model: {json.dumps({**MODEL, 'is_mimo': True, 'mimo_rank': 2})}\n"
        "data: {name: text_lm, corpus: python_stdlib, max_bytes: 60000, seq_len: 32}\n"
        "optim: {lr: 0.003}\n"
        "train: {steps: 8, batch_size: 4, eval_every: 4, eval_batches: 2, progress: false}\n"
        "reduction: {mode: tolerance, tau: 0.05, method: output, attempts: [3, 6], calib_batches: 2}\n"
    )
    text_lm(corpus="python_stdlib", max_bytes=60000, seq_len=32, seed=2)  # built once, before the ranks start
    r0, r1 = two_ranks(recipe, tmp_path / "run")
    assert len(r0) >= 2 and r0 == r1 and r0[-1]["sizes"] != [12, 12]


def test_mamba3_balanced_cuts_train_and_resume(tmp_path):
    """method: balanced: the first cut adds each layer's bc_proj (fresh Adam state for it and the
    turned biases), the second composes it; a resume rebuilds the projected shapes bit for bit."""
    recipe = _recipe(tmp_path, is_mimo=True, mimo_rank=2)
    recipe["reduction"]["method"] = "balanced"
    tr = Trainer(recipe_from_dict(recipe))
    s = tr.fit()
    assert s["val_perplexity"] < 256 and tr.model.config.bc_proj_in == [6, 6]
    cuts = [r for r in read_metrics(Path(tmp_path / "run" / "metrics.jsonl")) if r["kind"] == "cut"]
    assert cuts[0]["optimizer"]["sliced"] == 6 and cuts[0]["optimizer"]["dropped"] == 4  # in_proj, norms; biases
    again = Trainer(recipe_from_dict(recipe), resume=tmp_path / "run")
    assert again.model.config.bc_proj_in == [6, 6] and again.model.state_sizes == tr.model.state_sizes
    for a, b in zip(again.model.state_dict().values(), tr.model.state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu())
