"""A recipe's ``base:``: the recipe's keys on top of its base's, sections merged key by key,
chains followed, cycles and missing bases refused by name; a run's config.yaml stays complete."""

import pytest
import yaml

from compressmamba.recipe_index import RECIPES_DIR, recipe_names
from compressmamba.training import Trainer, load_recipe, recipe_from_dict
from compressmamba.training.config import read_recipe


def _write(path, mapping):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(mapping, sort_keys=False))
    return path


def test_base_merges_sections_key_by_key(toy_recipe, tmp_path):
    _write(tmp_path / "base.yaml", toy_recipe)
    child = _write(
        tmp_path / "child.yaml",
        {"base": "base.yaml", "seed": 5, "model": {"state_size": 7}, "reduction": {"mode": "none"}},
    )
    r = load_recipe(child)
    assert r.seed == 5
    assert r.model == {**toy_recipe["model"], "state_size": 7}  # the other model keys come from the base
    assert r.reduction.mode == "none" and r.reduction.fraction == 0.25 and r.reduction.attempts == [8, 16]
    assert r.train.steps == 30 and r.optim.lr == 3e-3
    assert r.name == tmp_path.name + "/child"  # the base's name ("toy") is not inherited: its own file's
    assert "base" not in read_recipe(child)
    with pytest.raises(ValueError, match="base = 'base.yaml' is resolved when a recipe file is read"):
        recipe_from_dict(yaml.safe_load(child.read_text()))


def test_base_chains_through_files_and_shipped_names(tmp_path):
    _write(tmp_path / "mid.yaml", {"base": "smnist/cpu_full", "train": {"steps": 40}})  # a shipped name
    _write(tmp_path / "sub" / "leaf.yaml", {"base": "../mid.yaml", "name": "leaf", "optim": {"lr": 0.01}})
    r = load_recipe(tmp_path / "sub" / "leaf.yaml", ["model.state_size=9"])
    full = load_recipe("smnist/cpu_full")
    assert (r.name, r.train.steps, r.optim.lr, r.model["state_size"]) == ("leaf", 40, 0.01, 9)
    assert r.train.batch_size == full.train.batch_size and r.optim.schedule == full.optim.schedule
    assert r.data == full.data


def test_a_base_cycle_is_refused_with_the_chain(tmp_path):
    _write(tmp_path / "a.yaml", {"base": "b.yaml"})
    _write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ValueError, match=r"cycle.*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_recipe(tmp_path / "a.yaml")
    _write(tmp_path / "self.yaml", {"base": "self.yaml"})
    with pytest.raises(ValueError, match="cycle"):
        load_recipe(tmp_path / "self.yaml")


def test_a_missing_base_names_the_recipe_and_the_base(tmp_path):
    child = _write(tmp_path / "child.yaml", {"base": "nowhere.yaml"})
    with pytest.raises(FileNotFoundError, match=r"child\.yaml.*base 'nowhere\.yaml'"):
        load_recipe(child)
    _write(tmp_path / "bad.yaml", {"base": 3})
    with pytest.raises(ValueError, match="base = 3"):
        load_recipe(tmp_path / "bad.yaml")


def test_a_runs_config_yaml_is_the_complete_resolved_recipe(toy_recipe, tmp_path):
    _write(tmp_path / "base.yaml", toy_recipe)
    child = _write(tmp_path / "child.yaml", {"base": "base.yaml", "name": "child", "train": {"steps": 20}})
    recipe = load_recipe(child)
    Trainer(recipe)  # writes config.yaml
    written = yaml.safe_load((recipe.run_dir() / "config.yaml").read_text())
    assert "base" not in written
    assert written == recipe.to_dict()
    assert written["model"] == toy_recipe["model"] and written["train"]["steps"] == 20


def test_every_shipped_base_is_a_shipped_name_and_resolves():
    """Shipped recipes name their base by shipped name, so `compressmamba recipes copy` gives a
    file that still resolves from any folder."""
    for name in recipe_names():
        base = yaml.safe_load((RECIPES_DIR / f"{name}.yaml").read_text()).get("base")
        if base is not None:
            assert base in recipe_names(), (name, base)
        assert load_recipe(name).name == name


def test_a_copied_sweep_recipe_still_resolves_its_base(tmp_path, monkeypatch):
    from compressmamba.recipe_index import copy_recipe

    target = copy_recipe("scifar/tau0.05", tmp_path / "mine")
    monkeypatch.chdir(tmp_path)  # away from the repository: the base is found by its shipped name
    assert load_recipe(target).to_dict() == load_recipe("scifar/tau0.05").to_dict()
