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
from compressmamba.recipe_index import RECIPES_DIR
from compressmamba.training import Trainer, recipe_from_dict
from compressmamba.training.metrics import read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from hybrid_configs import tiny_config  # noqa: E402

FSDP2_CPU = RECIPES_DIR / "accelerate" / "fsdp2_cpu.yaml"
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


def _as_killed_at_prev(src: Path, dst: Path, sharded: bool) -> Path:
    """A copy of finished run ``src`` as a run killed after its previous checkpoint (step 16, both
    cuts behind it) leaves it: that checkpoint is the last, nothing after it is written."""
    shutil.copytree(src, dst, symlinks=True)
    ck = dst / "checkpoints"
    if sharded:
        newest = os.readlink(ck / "last")
        (ck / "last").unlink()
        os.symlink(os.readlink(ck / "prev"), ck / "last")
        shutil.rmtree(ck / newest)
    else:
        os.replace(ck / "prev.pt", ck / "last.pt")
    (dst / "summary.json").unlink()
    shutil.rmtree(dst / "model")
    return dst


def _safetensors(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "model" / "model.safetensors")


@needs_fsdp2
@pytest.mark.slow
def test_fsdp2_sharded_checkpoint_resumes_bit_for_bit_and_at_world_size_one(tmp_path):
    """A two-rank FSDP2 run killed after its cuts resumes from its sharded checkpoint to the same
    losses and final weights, bit for bit; one process resumes from the same two-rank checkpoint
    (DCP reshards it) to the same losses within fp32 tolerance, with the Adam state it held; the
    final model/ is one folder that loads without any distributed setup."""
    from transformers import AutoModelForCausalLM

    key = "mamba2_balanced"
    text_lm(corpus="python_stdlib", max_bytes=60_000, seq_len=32, seed=1)
    full = tmp_path / "full"
    launch_fsdp2(_write(tmp_path, "full", _recipe(full, key)))
    ck = full / "checkpoints"
    assert os.readlink(ck / "last") == "step-00000020" and os.readlink(ck / "prev") == "step-00000016"
    assert not (ck / "last.pt").exists() and {p.name for p in (ck / "last").glob("__*_0.distcp")} == {
        "__0_0.distcp", "__1_0.distcp"}  # fmt: skip
    killed = _as_killed_at_prev(full, tmp_path / "killed", sharded=True)
    launch_fsdp2(_write(tmp_path, "killed", _recipe(killed, key)), "--resume", str(killed))
    assert _losses(killed) == _losses(full)  # bit for bit, the steps after the checkpoint included
    a, b = _safetensors(killed), _safetensors(full)
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    one = _as_killed_at_prev(full, tmp_path / "one", sharded=True)
    tr = Trainer(recipe_from_dict(_recipe(one, key, batch_size=8)), resume=one, allow_recipe_change=True)
    assert tr.step == 16 and tr.model.state_sizes == [5, 5] and tr.model.config.bc_proj_in == [12, 12]
    # Adam's own step per parameter: 16, but 6 for bc_proj, whose moments restarted at the second cut
    steps = {n: int(tr.optimizer.state[p]["step"]) for n, p in tr.model.named_parameters()}
    assert steps == {n: 6 if ".bc_proj." in n else 16 for n in steps}
    tr.fit()
    _close(_losses(one), _losses(full))
    model = AutoModelForCausalLM.from_pretrained(full / "model")
    assert model.state_sizes == [5, 5]
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()


@needs_fsdp2
@pytest.mark.slow
def test_fsdp2_resumes_a_one_process_checkpoint_on_two_ranks(tmp_path):
    """1 -> 2: a one-process run's last.pt resumed under FSDP2 on two ranks (its Adam state moved
    onto the sharded parameters) goes on to the same losses within fp32 tolerance."""
    key = "mamba"
    text_lm(corpus="python_stdlib", max_bytes=60_000, seq_len=32, seed=1)
    full = tmp_path / "full"
    Trainer(recipe_from_dict(_recipe(full, key, batch_size=8))).fit()
    two = _as_killed_at_prev(full, tmp_path / "two", sharded=False)
    launch_fsdp2(_write(tmp_path, "two", _recipe(two, key)), "--resume", str(two), "--allow-recipe-change")
    _close(_losses(two), _losses(full))
    ck = two / "checkpoints"
    assert os.readlink(ck / "last") == "step-00000020" and not (ck / "last.pt").exists()
