"""A checkpoint write that fails (issue 30, item 7): one line naming the file, the OS error and the
last good checkpoint; ``last.pt`` stays intact; no traceback from the CLI."""

import errno
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from compressmamba.training import Trainer, checkpoint, recipe_from_dict
from compressmamba.training.checkpoint import CheckpointWriteError, load_checkpoint
from compressmamba.training.config import apply_overrides


class _FullDisk:
    """A file whose writes fail with ENOSPC once ``budget`` bytes are written (a disk filling up)."""

    def __init__(self, f, budget: int):
        self.f, self.budget = f, budget

    def write(self, b):
        n = memoryview(b).nbytes
        if n > self.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= n
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)


def _recipe(toy_recipe, out, *more):
    over = ["train.steps=12", "train.checkpoint_every=3", "reduction.attempts=[8]", "reduction.plots=false"]
    over += [f"out_dir={out}", *more]
    return apply_overrides(toy_recipe, over)


def test_a_disk_full_at_a_checkpoint_is_one_line_and_last_pt_stays(toy_recipe, tmp_path, monkeypatch):
    real, calls = checkpoint._save_with_checksum, []

    def filling(obj, f):
        calls.append(1)
        return real(obj, _FullDisk(f, 4096) if len(calls) == 2 else f)  # the checkpoint at step 6

    monkeypatch.setattr(checkpoint, "_save_with_checksum", filling)
    run = tmp_path / "run"
    tr = Trainer(recipe_from_dict(_recipe(toy_recipe, run)))
    with pytest.raises(CheckpointWriteError) as failed:
        tr.fit()
    msg = str(failed.value)
    last = run / "checkpoints" / "last.pt"
    assert "\n" not in msg and f"could not write checkpoint {last}: ENOSPC (No space left on device)" in msg
    assert msg.startswith("step 6: ") and "The last checkpoint (step 3)" in msg and f"--resume {run}" in msg
    assert load_checkpoint(run)["step"] == 3  # intact, and loads
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]  # no temp file left
    assert not (run / ".run.lock").exists()


def test_a_file_too_large_from_the_cli_is_one_line_without_a_traceback(toy_recipe, tmp_path):
    """The real thing: ``ulimit -f`` below a checkpoint's size, in a fresh ``compressmamba train``
    resuming a finished run with more steps."""
    run = tmp_path / "run"
    raw = _recipe(toy_recipe, run)
    Trainer(recipe_from_dict(raw)).fit()
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(apply_overrides(raw, ["train.steps=15"])))
    limit = len(before) // 2
    assert all(p.stat().st_size < limit for p in run.iterdir() if p.is_file())  # only a checkpoint hits it

    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import conftest; "
            "from compressmamba.cli import main; sys.exit(main())")  # fmt: skip
    res = subprocess.run(
        [sys.executable, "-c", code, "train", str(recipe_file), "--resume", str(run), "--allow-recipe-change"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )  # fmt: skip
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert err[-1].startswith(f"compressmamba train: error: step 15: could not write checkpoint {last}: EFBIG")
    assert "The last checkpoint (step 12)" in err[-1]
    assert last.read_bytes() == before and load_checkpoint(run)["step"] == 12
