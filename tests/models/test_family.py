"""A model family is one spec: a toy family registered from a single ``ModelFamily`` trains with a
cut, is validated by the recipe schema, saves, and loads back through transformers' Auto classes
and ``load_pretrained`` — nothing else in the package names it (docs/adding-a-model.md)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from compressmamba import registry
from compressmamba.models import CompressMambaConfig, CompressMambaForCausalLM, load_pretrained
from compressmamba.models.common import per_layer_sizes
from compressmamba.registry import ModelFamily, families, register_family
from compressmamba.training import Trainer, recipe_from_dict


class ToyConfig(CompressMambaConfig):
    model_type = "compressmamba_toy"

    def __init__(self, **kwargs):  # transformers 5.25 drops the parent's fields from a subclass without one
        super().__init__(**kwargs)


class ToyForCausalLM(CompressMambaForCausalLM):
    config_class = ToyConfig


def build_toy(d_model: int = 16, n_layers: int = 2, state_size: int | list[int] = 12, state_sizes=None,
              vocab_size: int = 256, **_info):
    sizes = per_layer_sizes(state_size, state_sizes, n_layers)
    return ToyForCausalLM(ToyConfig(hidden_size=d_model, num_hidden_layers=n_layers, state_sizes=sizes,
                                    vocab_size=vocab_size))


TOY = ModelFamily(
    name="toy", build=build_toy, energy_methods=("output",), causal_lm=ToyForCausalLM,
    model_types=("compressmamba_toy",), description="a toy family for the tests",
)


@pytest.fixture
def toy_family():
    register_family(TOY)
    yield TOY
    registry.FAMILIES.pop("toy", None)
    registry.MODELS.pop("toy", None)


def _recipe(tmp_path, **red):
    return {
        "name": "toy-lm",
        "seed": 0,
        "out_dir": str(tmp_path / "run"),
        "model": {"name": "toy", "d_model": 16, "n_layers": 2, "state_size": 10},
        "data": {"name": "text_lm", "corpus": "python_stdlib", "max_bytes": 40_000, "seq_len": 32},
        "optim": {"lr": 3e-3},
        "train": {"steps": 8, "batch_size": 4, "eval_every": 8, "eval_batches": 1, "progress": False},
        "reduction": {"mode": "fixed", "fraction": 0.5, "attempts": [3], "calib_batches": 1, **red},
    }


def test_a_toy_family_from_one_spec_trains_with_a_cut_saves_and_loads(tmp_path, toy_family):
    assert families()["toy"] is toy_family
    summary = Trainer(recipe_from_dict(_recipe(tmp_path))).fit()
    assert summary["initial_state_sizes"] == [10, 10] and summary["final_state_sizes"] == [5, 5]

    saved = tmp_path / "run" / "model"
    auto = AutoModelForCausalLM.from_pretrained(saved)
    ours = load_pretrained(saved)
    assert type(auto) is ToyForCausalLM and type(ours) is ToyForCausalLM and ours.state_sizes == [5, 5]
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(auto(ids).logits, ours(ids).logits)


def test_the_recipe_schema_reads_the_spec(tmp_path, toy_family):
    with pytest.raises(ValueError, match=r"reduction.method = 'hankel'.*\['output'\] for model 'toy'"):
        recipe_from_dict(_recipe(tmp_path, method="hankel"))
    bad = _recipe(tmp_path)
    bad["model"]["expand"] = 2  # not a parameter of build_toy
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['expand'\].*model 'toy'"):
        recipe_from_dict(bad)
