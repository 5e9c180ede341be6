"""The built wheel, installed as a user installs it (not editable), runs a shipped recipe by name
from an empty folder: the recipes travel inside the package."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_SKIP = shutil.ignore_patterns(".git", ".venv*", "runs", "build", "dist", "*.egg-info", "__pycache__", ".*cache*")


def _run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out.stdout


@pytest.mark.slow
def test_wheel_installs_and_runs_a_recipe_by_name_from_an_empty_folder(tmp_path):
    src = tmp_path / "src"  # a copy, so the build leaves nothing in the working tree
    shutil.copytree(ROOT, src, symlinks=True, ignore=_SKIP)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", src])
    (wheel,) = (tmp_path / "dist").glob("compressmamba-*.whl")

    # A fresh venv that sees this environment's dependencies (torch, transformers, ...) through a
    # .pth line but not its compressmamba: the wheel is the only compressmamba it can import.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    purelib = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    (purelib / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps", "-q", wheel])

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "COMPRESSMAMBA_CACHE": str(tmp_path / "cache"), "PYTHONPATH": ""}
    py = str(venv / "bin" / "python")
    where = _run([py, "-c", "import compressmamba; print(compressmamba.__file__)"], cwd=empty, env=env)
    assert Path(where.strip()).is_relative_to(venv), where
    listing = _run([py, "-m", "compressmamba", "recipes"], cwd=empty, env=env)
    assert "lm/stdlib_demo" in listing and "smnist/demo" in listing
    _run(
        [py, "-m", "compressmamba", "train", "lm/stdlib_demo", "train.steps=4", "train.eval_every=4",
         "train.eval_batches=1", "train.log_every=2", "train.progress=false", "data.max_bytes=200000",
         "reduction.attempts=[2]", "out_dir=run"],
        cwd=empty, env=env,
    )
    assert (empty / "run" / "model" / "config.json").is_file()
    assert (empty / "run" / "summary.json").is_file()
    copied = _run([py, "-m", "compressmamba", "recipes", "copy", "lm/stdlib_demo", "mine"], cwd=empty, env=env)
    assert (empty / "mine" / "stdlib_demo.yaml").read_text().startswith("# The README's main job"), copied
