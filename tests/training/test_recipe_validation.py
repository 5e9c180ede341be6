"""Recipes: every key checked against its section or builder, every value against its range."""

import json
import re

import pytest
import yaml

from compressmamba.cli import main
from compressmamba.training import recipe_from_dict
from compressmamba.training.config import apply_overrides


@pytest.mark.parametrize(
    "override,named",
    [
        ("model.state_sise=8", "state_sise"),
        ("data.pol=3", "pol"),
    ],
)
def test_typos_in_model_and_data_are_rejected_with_the_valid_keys(toy_recipe, override, named):
    with pytest.raises(ValueError, match=rf"unknown key\(s\) \['{named}'\].*valid keys: \[.*") as e:
        recipe_from_dict(apply_overrides(toy_recipe, [override]))
    section = override.split(".")[0]
    assert f"section '{section}'" in str(e.value)
    if section == "model":
        assert "'state_size'" in str(e.value) and "'n_layers'" in str(e.value)


def test_mamba_and_real_dataset_keys_are_checked_too(toy_recipe):
    raw = apply_overrides(toy_recipe, ["model.name=mamba", "model.dropout=0.1"])
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['dropout'\].*model 'mamba'"):
        recipe_from_dict(raw)
    raw = apply_overrides(toy_recipe, ["data.name=smnist", "data.pol=3"])
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['pol'\].*dataset|unknown key\(s\) \['pol'\]"):
        recipe_from_dict(raw)
    recipe_from_dict(apply_overrides(toy_recipe, ["data.name=smnist", "data.pool=3"]))


@pytest.mark.parametrize(
    "override,key",
    [
        ("optim.grad_clip=-1", "optim.grad_clip"),
        ("train.eval_batches=0", "train.eval_batches"),
        ("train.log_every=0", "train.log_every"),
        ("reduction.attempts=null & reduction.n_attempts=0", "reduction.n_attempts"),
        ("optim.betas=[0.9]", "optim.betas"),
        ("optim.betas=[0.9, 1.0]", "optim.betas"),
        ("optim.betas=[-0.1, 0.9]", "optim.betas"),
        ("optim.min_lr_ratio=1.5", "optim.min_lr_ratio"),
        ("optim.min_lr_ratio=-0.1", "optim.min_lr_ratio"),
        ("optim.warmup_steps=-5", "optim.warmup_steps"),
        ("optim.weight_decay=-0.01", "optim.weight_decay"),
        ("train.checkpoint_every=-1", "train.checkpoint_every"),
        ("reduction.pragmatic_tolerance=-0.1", "reduction.pragmatic_tolerance"),
        ("seed=1.5", "seed"),
        ("seed=abc", "seed"),
        ("task=regression", "task"),
        ("model.n_layers=0", "model.n_layers"),
        ("model.d_model=-4", "model.d_model"),
        ("reduction.method=hankle", "reduction.method"),
        ("reduction.method=output", "reduction.method"),  # the LRU has Hankel singular values only
        ("train.report_to=[1, 2]", "train.report_to"),
    ],
)
def test_bad_values_are_rejected_naming_the_key_and_the_range(toy_recipe, override, key):
    raw = apply_overrides(toy_recipe, override.split(" & "))
    with pytest.raises(ValueError, match="^" + re.escape(key) + " = .*: expected"):
        recipe_from_dict(raw)


def test_n_attempts_only_matters_when_cutting(toy_recipe):
    """n_attempts = 0 is refused where cuts are scheduled from it and accepted (kept as given)
    where none are: the check follows reduction.mode, not the number alone."""
    base = ["reduction.attempts=null", "reduction.n_attempts=0"]
    with pytest.raises(ValueError, match=r"^reduction.n_attempts = 0: expected >= 1 in reduction.mode 'tolerance'"):
        recipe_from_dict(apply_overrides(toy_recipe, [*base, "reduction.mode=tolerance"]))
    r = recipe_from_dict(apply_overrides(toy_recipe, [*base, "reduction.mode=none"]))
    assert (r.reduction.mode, r.reduction.n_attempts) == ("none", 0)
    r = recipe_from_dict(apply_overrides(toy_recipe, ["optim.grad_clip=0", "train.report_to=[tensorboard, wandb]"]))
    assert r.optim.grad_clip == 0 and r.train.report_to == ["tensorboard", "wandb"]


def test_train_accepts_options_and_overrides_in_any_order(toy_recipe, tmp_path, capsys):
    raw = apply_overrides(
        toy_recipe, ["reduction.mode=none", "reduction.attempts=null", "train.steps=4", "train.eval_every=2"]
    )
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(raw))
    run = raw["out_dir"]
    assert main(["train", str(path), "train.log_every=2"]) == 0
    # an override after --resume that changes the run is refused, naming the key ...
    assert main(["train", str(path), "--resume", run, "train.steps=6"]) == 2
    assert "train.steps: 4 -> 6" in capsys.readouterr().err
    # ... and accepted when asked for, with options before and after the overrides
    assert (
        main(["train", str(path), "train.steps=6", "--resume", run, "train.log_every=3", "--allow-recipe-change"]) == 0
    )
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 6
    with pytest.raises(SystemExit):
        main(["train", str(path), "--resume", run, "--no-such-option"])


_LM = (
    "name: weak\nout_dir: OUT\nmodel: {name: mamba, d_model: 8, n_layers: 1, state_size: 4}\n"
    "data: {name: text_lm, corpus: python_stdlib, max_bytes: 20000, seq_len: 16}\n"
    "train: {steps: 1, batch_size: 2, progress: false}\n"
)


@pytest.mark.parametrize(
    "text,overrides,says",
    [
        (_LM, ["model.expand=abc"], ["model.expand = 'abc'", "positive integer"]),
        (_LM, ["model.expand=0"], ["model.expand = 0", "positive integer"]),
        (_LM, ["train=5"], ["section 'train' = 5", "mapping"]),
        (_LM, ["train.steps=[1,"], ["train.steps=[1,", "not valid YAML"]),
        ("name: x\nmodel: {name: mamba\n", [], ["not valid YAML", "line 3"]),
        ("- a list\n", [], ["holds a list", "mapping"]),
        # issue 25's probe: these named no key (the registry's words, int()'s words, a bare length rule)
        (_LM, ["model.name=transformer"], ["model.name = 'transformer'", "'mamba'"]),
        (_LM, ["data.name=imagenet"], ["data.name = 'imagenet'", "'text_lm'"]),
        (_LM, ["model.state_size=[4,4]"], ["model.state_size = [4, 4]", "model.n_layers = 1"]),
        (_LM, ["--seeds", "0,x"], ["--seeds '0,x'", "0-4"]),
    ],
)
def test_weak_spots_get_one_line_naming_key_value_and_fix(tmp_path, capsys, text, overrides, says):
    """Weak spots: these ended in a message without the key, a torch error about groups, a
    TypeError or yaml's ParserError traceback."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text.replace("OUT", str(tmp_path / "run")))
    assert main(["train", str(recipe), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and all(s in err for s in says), err
    if "not valid YAML" in err and not overrides:
        assert str(recipe) in err


def test_a_binary_recipe_file_is_refused_naming_it(tmp_path, capsys):
    """Probe (issue 25): a recipe that is no text ended in UnicodeDecodeError's words, naming no file."""
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(b"\x00\xff\xfe\x89PNG\r\n" + bytes(range(256)))
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(recipe) in err and "not a text file" in err, err


def test_train_seeds_take_lists_and_ranges():
    from compressmamba.training.config import parse_seeds

    assert parse_seeds("0-2,7") == [0, 1, 2, 7] and parse_seeds("3") == [3]
    for bad in ("0,x", "", "1,1", "-1"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)
