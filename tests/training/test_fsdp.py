"""FSDP2 through Accelerate on two CPU ranks (gloo): the same losses and cuts as DDP and as one
process, sharded checkpoints that resume bit-for-bit and at another world size, a consolidated
final model. Each two-rank run starts its own interpreters (tens of seconds on a loaded
machine): marked slow, still run in CI."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate import Accelerator

from compressmamba.data.text import text_lm
from compressmamba.models import hybrid
from compressmamba.training import Trainer, recipe_from_dict
from compressmamba.training.metrics import read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from hybrid_configs import tiny_config  # noqa: E402

FSDP2_CPU = Path(__file__).resolve().parents[2] / "compressmamba" / "recipes" / "accelerate" / "fsdp2_cpu.yaml"
needs_fsdp2 = pytest.mark.skipif(
    not hasattr(Accelerator, "is_fsdp2"), reason="FSDP2 through Accelerate needs accelerate>=1.6.0"
)
DATA = {"name": "text_lm", "corpus": "python_stdlib", "max_bytes": 60_000, "seq_len": 32}


def _granite_moe():
    return {**tiny_config("granitemoehybrid", vocab_size=256), "num_local_experts": 2, "num_experts_per_tok": 1}


MODELS = {
    "mamba2_balanced": ({"name": "mamba2", "d_model": 16, "n_layers": 2, "state_size": 12, "head_dim": 8,
                         "n_groups": 2}, "balanced"),
    "mamba": ({"name": "mamba", "d_model": 16, "n_layers": 2, "state_size": 12}, None),
    "granitemoehybrid": ({"name": "hybrid", "config": "granite"}, None),
    "jamba": ({"name": "hybrid", "config": "jamba"}, None),
}  # fmt: skip


def _model(key):
    model, method = MODELS[key]
    if model["name"] == "hybrid":
        why = hybrid.available("granitemoehybrid" if key == "granitemoehybrid" else "jamba")
        if why:
            pytest.skip(why)
        model = {"name": "hybrid", "config": _granite_moe() if key == "granitemoehybrid" else tiny_config("jamba", 256)}
    return model, method


def _recipe(run_dir, key, batch_size=4, steps=20):
    model, method = _model(key)
    return {
        "name": "fsdp-tiny",
        "seed": 1,
        "out_dir": str(run_dir),
        "model": model,
        "data": DATA,
        "optim": {"lr": 3e-3, "schedule": "cosine", "warmup_frac": 0.1},
        "train": {"steps": steps, "batch_size": batch_size, "eval_every": 10, "eval_batches": 2, "log_every": 1,
                  "checkpoint_every": 4, "progress": False},
        "reduction": {"mode": "fixed", "fraction": 0.3, "method": method, "attempts": [5, 10], "calib_batches": 2,
                      "plots": False},
    }  # fmt: skip


def _write(tmp_path, name, recipe) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def launch_fsdp2(recipe: Path, *args: str) -> None:
    """``accelerate launch --config_file fsdp2_cpu.yaml -m compressmamba train RECIPE ARGS``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP2_CPU),
           "-m", "compressmamba", "train", str(recipe), *args]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    assert res.returncode == 0, res.stderr[-4000:]


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"}


def _cuts(run_dir: Path) -> list[tuple[int, list[int]]]:
    return [(r["step"], r["new_sizes"]) for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "cut"]


def _close(a: dict, b: dict, rtol=2e-4):
    assert sorted(a) == sorted(b)
    ta, tb = torch.tensor([a[k] for k in sorted(a)]), torch.tensor([b[k] for k in sorted(b)])
    assert torch.allclose(ta, tb, rtol=rtol, atol=1e-5), (ta - tb).abs().max()


@needs_fsdp2
@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(MODELS))
def test_fsdp2_ddp_and_one_process_agree_across_two_cuts(tmp_path, key, two_ranks):
    """20 steps, cuts at 5 and 10: FSDP2 and DDP (two ranks of 4) and one process (8) see the same
    batches, so they give the same losses within fp32 tolerance and cut to the same sizes."""
    text_lm(corpus="python_stdlib", max_bytes=60_000, seq_len=32, seed=1)  # built once, before the ranks start
    launch_fsdp2(_write(tmp_path, "fsdp", _recipe(tmp_path / "fsdp", key)))
    two_ranks(_write(tmp_path, "ddp", _recipe(tmp_path / "ddp", key)), tmp_path / "ddp")
    Trainer(recipe_from_dict(_recipe(tmp_path / "one", key, batch_size=8))).fit()
    runs = {name: tmp_path / name for name in ("fsdp", "ddp", "one")}
    cuts = {name: _cuts(d) for name, d in runs.items()}
    assert [s for s, _ in cuts["one"]] == [5, 10] and cuts["fsdp"] == cuts["ddp"] == cuts["one"]
    _close(_losses(runs["fsdp"]), _losses(runs["one"]))
    _close(_losses(runs["ddp"]), _losses(runs["one"]))
    summary = json.loads((runs["fsdp"] / "summary.json").read_text())
    assert summary["parallelism"] == "fsdp2" and summary["world_size"] == 2
    first = next(r for r in read_metrics(runs["fsdp"] / "metrics.jsonl") if r["kind"] == "train")
    assert first["parallelism"] == "fsdp2" and first["world_size"] == 2
    assert json.loads((runs["ddp"] / "summary.json").read_text())["parallelism"] == "ddp"
    assert json.loads((runs["one"] / "summary.json").read_text())["parallelism"] == "none"
