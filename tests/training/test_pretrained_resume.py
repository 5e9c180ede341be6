"""A run started from a pretrained model (``model.pretrained``) that cut its states resumes: the
builders rebuild the pretrained model at the checkpoint's state sizes (issue 30, item 6)."""

import sys
from pathlib import Path

import pytest
import torch

from compressmamba.models import hybrid
from compressmamba.training import Trainer, recipe_from_dict
from compressmamba.training.checkpoint import load_checkpoint
from compressmamba.training.config import apply_overrides

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from hybrid_configs import tiny_config  # noqa: E402

MODELS = {
    "mamba": ({"name": "mamba", "d_model": 16, "n_layers": 2, "state_size": 8}, "output"),
    "mamba2": ({"name": "mamba2", "d_model": 16, "n_layers": 2, "state_size": 8, "head_dim": 8, "n_groups": 2,
                "chunk_size": 8}, "balanced"),  # fmt: skip
    "bamba": ({"name": "hybrid", "config": tiny_config("bamba", vocab_size=256)}, "output"),  # Mamba-2 mixers
    "falcon_mamba": ({"name": "hybrid", "config": tiny_config("falcon_mamba", vocab_size=256)}, "output"),  # Mamba-1
}


def _recipe(out, model, method, steps, attempts):
    return {
        "name": "pretrained-resume",
        "seed": 1,
        "out_dir": str(out),
        "model": model,
        "data": {"name": "text_lm", "corpus": "python_stdlib", "max_bytes": 40_000, "seq_len": 16},
        "optim": {"lr": 3e-3},
        "train": {"steps": steps, "batch_size": 2, "eval_every": 4, "eval_batches": 1, "progress": False},
        "reduction": {"mode": "fixed", "fraction": 0.5, "method": method, "attempts": attempts,
                      "calib_batches": 1, "plots": False},  # fmt: skip
    }


@pytest.mark.parametrize("family", list(MODELS))
def test_a_run_from_a_pretrained_model_resumes_after_its_cuts(family, tmp_path):
    model, method = MODELS[family]
    if model["name"] == "hybrid" and hybrid.available(family):
        pytest.skip(hybrid.available(family))
    Trainer(recipe_from_dict(_recipe(tmp_path / "base", model, method, 2, []))).fit()
    base = tmp_path / "base" / "model"
    tuned = _recipe(tmp_path / "tuned", {"name": model["name"], "pretrained": str(base)}, method, 6, [2, 4])
    first = Trainer(recipe_from_dict(tuned))
    s = first.fit()
    cut = s["final_state_sizes"]
    assert cut != s["initial_state_sizes"] and load_checkpoint(tmp_path / "tuned")["state_sizes"] == cut

    more = recipe_from_dict(apply_overrides(tuned, ["train.steps=8"]))
    again = Trainer(more, resume=tmp_path / "tuned", allow_recipe_change=True)
    assert again.step == 6 and again.model.state_sizes == cut
    for (k, a), b in zip(again.model.state_dict().items(), first.model.state_dict().values()):
        assert torch.equal(a, b), k
    s2 = again.fit()
    assert s2["steps"] == 8 and s2["final_state_sizes"] == cut


def test_lru_has_no_pretrained_key_and_says_so():
    with pytest.raises(ValueError, match="pretrained"):
        recipe_from_dict(_recipe("x", {"name": "lru", "pretrained": "somewhere"}, "output", 2, []))
