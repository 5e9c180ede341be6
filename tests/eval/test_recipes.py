"""Every recipe under recipes/ parses and trains two steps on tiny fixtures written in the real
on-disk formats (nothing downloaded), with overrides shrinking the model."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from compressmamba.registry import _DATA_MODULES, DATASETS, _import_all
from compressmamba.training import Trainer, load_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if p.parent.name != "accelerate")  # launch configs
RNG = np.random.default_rng(0)


# --- fixture writers: each data set's real on-disk format ----------------------------------------
def write_cifar(root: Path) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(x) for x in RNG.integers(0, 10, 6)]
        batch = {"data": RNG.integers(0, 256, (6, 3072), dtype=np.uint8), "labels": labels}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return root


def _listops_expr() -> tuple[str, int]:
    args = [int(x) for x in RNG.integers(0, 10, int(RNG.integers(2, 5)))]
    op, fn = [("[MAX", max), ("[MIN", min), ("[SM", lambda a: sum(a) % 10)][int(RNG.integers(0, 3))]
    text = op
    for a in args:
        text = f"( {text} {a} )"
    return f"( {text} ] )", fn(args)


def write_listops(root: Path) -> Path:
    root.mkdir(parents=True)
    for split in ("train", "val", "test"):
        rows = [_listops_expr() for _ in range(8)]
        (root / f"basic_{split}.tsv").write_text("Source\tTarget\n" + "".join(f"{s}\t{t}\n" for s, t in rows))
    return root


def _words(n: int) -> str:
    vocab = ["the", "film", "was", "good", "bad", "plot", "actor", "great", "awful", "scene"]
    return " ".join(vocab[int(i)] for i in RNG.integers(0, len(vocab), n))


def write_imdb(root: Path) -> Path:
    for split in ("train", "test"):
        for label, rating in (("pos", 8), ("neg", 2)):
            d = root / "aclImdb" / split / label
            d.mkdir(parents=True)
            for i in range(4):
                (d / f"{i}_{rating}.txt").write_text(_words(30))
    return root


def write_aan(root: Path) -> Path:
    root.mkdir(parents=True)
    for split in ("train", "eval", "test"):
        lines = [f"{i % 2}\tid{i}a\tid{i}b\t{_words(20)}\t{_words(25)}" for i in range(8)]
        (root / f"new_aan_pairs.{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


def write_pathfinder(root: Path, size: int = 32) -> Path:
    from PIL import Image

    for diff in ("curv_baseline", "curv_contour_length_9", "curv_contour_length_14"):
        (root / diff / "imgs" / "0").mkdir(parents=True)
        (root / diff / "metadata").mkdir(parents=True)
        meta = []
        for i in range(20):
            pixels = RNG.integers(0, 256, (size, size), dtype=np.uint8)
            Image.fromarray(pixels).save(root / diff / "imgs/0" / f"sample_{i}.png")
            meta.append(f"imgs/0 sample_{i}.png 0 {i % 2} 1.0 6 2 2 0.5 1 1")
        (root / diff / "metadata" / "0.npy").write_text("\n".join(meta) + "\n")
    return root


def write_text(root: Path) -> Path:
    root.mkdir(parents=True)
    for i in range(4):
        (root / f"doc{i}.txt").write_text(_words(200))
    return root


WRITERS = {
    "text_lm": write_text,
    "scifar": lambda r: write_cifar(r / "cifar10"),
    "listops": lambda r: write_listops(r / "listops-1000"),
    "imdb": lambda r: write_imdb(r / "imdb"),
    "aan": lambda r: write_aan(r / "tsv_data"),
    "pathfinder": lambda r: write_pathfinder(r / "pathfinder32"),
}


# --- the test ------------------------------------------------------------------------------------
def _mamba_classifies() -> bool:
    from compressmamba.models import mamba

    return hasattr(mamba, "MambaClassifier")


def _overrides(recipe, tmp_path: Path, data_path: Path | None) -> list[str]:
    name = recipe.data["name"]
    # a hybrid recipe's model is a stock transformers config (tiny in the CPU recipes)
    shrink = ["model.d_model=8", "model.n_layers=1", "model.state_size=6"] if recipe.model["name"] != "hybrid" else []
    o = [
        f"out_dir={tmp_path / 'run'}",
        *shrink,
        "train.steps=2",
        "train.batch_size=2",
        "train.eval_every=2",
        "train.eval_batches=1",
        "train.log_every=1",
        "train.progress=false",
        "reduction.plots=false",
        "train.mixed_precision='no'",
    ]
    if recipe.model["name"] in ("mamba2", "mamba3"):  # d_model 8 → 16 channels: 2 heads of 8, one group each
        o += ["model.head_dim=8", "model.n_groups=2", "model.chunk_size=8"]
    if recipe.reduction.mode != "none":
        o.append("reduction.attempts=[1]")
    if name in ("smnist", "psmnist"):
        o.append("data.limit_train=40")
    if name in ("listops", "imdb", "aan"):
        o.append("data.l_max=96")
    if name == "pathfinder":
        o.append("data.cache=false")
    if name == "text_lm":
        o += ["data.seq_len=16", "data.tokenizer=byte"]
        if recipe.data.get("corpus"):
            o.append("data.max_bytes=20000")
        else:
            o.append(f"data.files={data_path}/*.txt")
    elif data_path is not None:
        o.append(f"data.path={data_path}")
    return o


def write_gensim_wiki(site: Path) -> None:
    """A MediaWiki XML dump (bz2) where gensim's wheel keeps its Wikipedia excerpt."""
    import bz2

    from compressmamba.data.sources import GENSIM_WIKI

    pages = "".join(
        f"<page><title>P{i}</title><revision><text>{_words(60)} [[link]] {{{{cite}}}}</text></revision></page>"
        for i in range(12)
    )
    dump = site / "gensim" / GENSIM_WIKI
    dump.parent.mkdir(parents=True)
    dump.write_bytes(bz2.compress(f"<mediawiki>{pages}</mediawiki>".encode()))
    (site / "gensim" / "__init__.py").write_text("raise ImportError('the corpus must not import gensim')\n")


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT / "recipes")) for p in RECIPES])
def test_recipe_runs_two_steps(path, tmp_path, monkeypatch):
    recipe = load_recipe(path)  # parses, unknown keys rejected
    if recipe.data.get("corpus") == "gensim_wiki":  # the real file needs gensim's wheel: the same format
        write_gensim_wiki(tmp_path / "site")
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
    name = recipe.data["name"]
    _import_all(_DATA_MODULES)
    if name not in DATASETS:
        pytest.skip(f"dataset {name!r} is not registered (its loader is not on main yet)")
    if recipe.model["name"] == "mamba" and name != "text_lm" and not _mamba_classifies():
        pytest.skip("the mamba model is a causal LM only; no classification head yet")
    if recipe.model.get("pretrained"):
        pytest.skip("recipe loads a pretrained hub checkpoint")
    if recipe.model["name"] == "hybrid":
        from compressmamba.models.hybrid import available

        why = available(recipe.model["config"]["model_type"])
        if why:
            pytest.skip(why)
    data_path = WRITERS[name](tmp_path / "data") if name in WRITERS else None
    overrides = _overrides(recipe, tmp_path, data_path)
    if recipe.baseline.get("name") == "distill":
        teacher = tmp_path / "teacher"
        t_over = [o for o in overrides if not o.startswith("out_dir=")]
        Trainer(load_recipe(path, [*t_over, f"out_dir={teacher}", "baseline={}"])).fit()
        overrides.append(f"baseline.teacher={teacher}")
    summary = Trainer(load_recipe(path, overrides)).fit()
    assert summary["steps"] == 2
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["recipe"] == recipe.name


@pytest.mark.slow
def test_seeds_option_gives_one_run_folder_per_seed(tmp_path, monkeypatch):
    from compressmamba.cli import main

    monkeypatch.chdir(tmp_path)
    recipe = ROOT / "recipes/smnist/cpu_compressed.yaml"
    over = _overrides(load_recipe(recipe), tmp_path, None)
    over = [o for o in over if not o.startswith("out_dir=")]
    assert main(["train", str(recipe), *over, "--seeds", "3,5"]) == 0
    for seed in (3, 5):
        s = json.loads((tmp_path / f"runs/smnist/cpu_compressed/seed{seed}/summary.json").read_text())
        assert s["seed"] == seed and s["steps"] == 2


@pytest.mark.slow
def test_recipe_runs_under_accelerate_launch(tmp_path):
    import subprocess
    import sys

    recipe = ROOT / "recipes/smnist/cpu_compressed.yaml"
    over = _overrides(load_recipe(recipe), tmp_path, None)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1"]
    cmd += ["-m", "compressmamba", "train", str(recipe), *over]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2
