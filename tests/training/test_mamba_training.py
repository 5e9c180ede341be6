import json
from pathlib import Path

import pytest
import torch
import yaml

from compressmamba.data.text import text_lm
from compressmamba.training import Trainer, recipe_from_dict
from compressmamba.training.metrics import read_metrics
from compressmamba.training.plots import kept_mask

MODELS = {
    "mamba": {"name": "mamba", "d_model": 16, "n_layers": 2, "state_size": 12},
    "mamba2": {"name": "mamba2", "d_model": 16, "n_layers": 2, "state_size": 12, "head_dim": 8, "n_groups": 2},
}
# parameters a cut slices per layer: A_log, x_proj (Mamba-1); in_proj, conv1d weight and bias (Mamba-2)
SLICED = {"mamba": 4, "mamba2": 6}


def _recipe(tmp_path, model="mamba", **red):
    return {
        "name": "lm-tiny",
        "seed": 0,
        "out_dir": str(tmp_path / "run"),
        "model": dict(MODELS[model]),
        "data": {"name": "text_lm", "corpus": "python_stdlib", "max_bytes": 60_000, "seq_len": 32},
        "optim": {"lr": 3e-3, "schedule": "cosine", "warmup_frac": 0.1},
        "train": {"steps": 12, "batch_size": 4, "eval_every": 6, "eval_batches": 2, "progress": False},
        "reduction": {
            "mode": "fixed",
            "fraction": 0.5,
            "method": "output",
            "attempts": [4, 8],
            "calib_batches": 2,
            **red,
        },
    }


@pytest.mark.parametrize("model", sorted(MODELS))
def test_mamba_lm_compresses_while_training_and_resumes(tmp_path, model):
    tr = Trainer(recipe_from_dict(_recipe(tmp_path, model)))
    s = tr.fit()
    assert s["initial_state_sizes"] == [12, 12] and s["final_state_sizes"] == [3, 3]
    assert s["val_perplexity"] is not None and s["val_perplexity"] < 256
    cuts = [r for r in read_metrics(Path(tmp_path / "run" / "metrics.jsonl")) if r["kind"] == "cut"]
    assert cuts[0]["optimizer"]["sliced"] == SLICED[model] and cuts[0]["optimizer"]["dropped"] == 0
    assert (tmp_path / "run" / "plots" / "state_sizes.png").exists()
    assert (tmp_path / "run" / "plots" / "energy_step4.png").exists()
    if model == "mamba":
        assert cuts[0]["kept"] == [list(range(6))] * 2  # largest selection: the top of each spectrum
    else:  # 2 groups of 12 reported as 24 states: 6 kept per group, 12 in all
        assert [len(k) for k in cuts[0]["kept"]] == [12, 12] and len(cuts[0]["energies"][0]) == 24
    again = Trainer(recipe_from_dict(_recipe(tmp_path, model)), resume=tmp_path / "run")
    assert again.model.state_sizes == [3, 3] and again.model.config.state_sizes == [3, 3]


def test_mamba2_balanced_cuts_train_on_compose_and_resume(tmp_path):
    """method: balanced through the one trainer: the first cut adds each layer's bc_proj (fresh
    Adam state; in_proj and conv1d keep theirs, their basis is unchanged), the second composes
    it (a new basis: its moments are dropped), and a resume rebuilds the projected shapes."""
    recipe = _recipe(tmp_path, "mamba2", method="balanced")
    tr = Trainer(recipe_from_dict(recipe))
    s = tr.fit()
    assert s["final_state_sizes"] == [3, 3] and s["val_perplexity"] < 256
    assert tr.model.config.bc_proj_in == [12, 12]
    assert tr.model.ssm_layers()[0].bc_proj.B.shape == (2, 3, 12)
    cuts = [r for r in read_metrics(Path(tmp_path / "run" / "metrics.jsonl")) if r["kind"] == "cut"]
    assert [c["new_sizes"] for c in cuts] == [[6, 6], [3, 3]]
    assert cuts[0]["optimizer"]["sliced"] == 0 and cuts[0]["optimizer"]["dropped"] == 0
    assert cuts[1]["optimizer"]["sliced"] == 0 and cuts[1]["optimizer"]["dropped"] == 4  # 2 layers × B, C
    assert [len(k) for k in cuts[0]["kept"]] == [12, 12] and len(cuts[0]["energies"][0]) == 24  # 6 of 12 per group
    again = Trainer(recipe_from_dict(recipe), resume=tmp_path / "run")
    assert again.model.state_sizes == [3, 3] and again.model.config.bc_proj_in == [12, 12]
    for a, b in zip(again.model.state_dict().values(), tr.model.state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu())


def test_cut_records_which_states_were_kept_for_the_plot(tmp_path):
    """With `smallest` selection the kept states are the bottom of the sorted spectrum: the cut
    row records their positions and the plot colours those, not the top ones."""
    recipe = _recipe(tmp_path, selection="smallest", attempts=[4])
    recipe["train"]["steps"] = 6
    Trainer(recipe_from_dict(recipe)).fit()
    cut = next(r for r in read_metrics(Path(tmp_path / "run" / "metrics.jsonl")) if r["kind"] == "cut")
    assert cut["new_sizes"] == [6, 6] and cut["kept"] == [list(range(6, 12))] * 2
    assert kept_mask(12, 6, cut["kept"][0]) == [False] * 6 + [True] * 6
    assert kept_mask(12, 6) == [True] * 6 + [False] * 6  # runs written without positions


@pytest.mark.slow
@pytest.mark.parametrize("model,method", [("mamba", "output"), ("mamba2", "output"), ("mamba2", "balanced")])
def test_mamba_ddp_two_processes_identical_cuts(tmp_path, model, method, two_ranks):
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(
        "name: ddp-lm\nseed: 2\n"
        f"out_dir: {tmp_path / 'run'}\n"
        f"model: {json.dumps(MODELS[model])}\n"
        "data: {name: text_lm, corpus: python_stdlib, max_bytes: 60000, seq_len: 32}\n"
        "optim: {lr: 0.003}\n"
        "train: {steps: 8, batch_size: 4, eval_every: 4, eval_batches: 2, progress: false}\n"
        f"reduction: {{mode: tolerance, tau: 0.05, method: {method}, attempts: [3, 6], calib_batches: 2}}\n"
    )
    text_lm(corpus="python_stdlib", max_bytes=60000, seq_len=32, seed=2)  # built once, before the ranks start
    r0, r1 = two_ranks(recipe, tmp_path / "run")
    assert len(r0) >= 2 and r0 == r1
    # and the cuts one process makes over the same global batch (2 ranks x 4): the ranks' summed
    # energies decide as one process's do, not each rank on its own half
    one = yaml.safe_load(recipe.read_text())
    one["out_dir"], one["train"]["batch_size"] = str(tmp_path / "one"), 8
    s = Trainer(recipe_from_dict(one)).fit()
    assert max(s["final_state_sizes"]) < 12 and r0[-1]["sizes"] == s["final_state_sizes"]
