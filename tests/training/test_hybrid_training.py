"""Each transformers hybrid family (tiny, built from a config) trained
with in-training cuts by the one trainer, resumed, run on two ranks, and compressed post hoc by
``compressmamba compress`` into each saved form."""

import json
import sys
from pathlib import Path

import pytest
import torch
import transformers

from compressmamba.cli import main
from compressmamba.data.text import text_lm
from compressmamba.models import hybrid
from compressmamba.training import Trainer, recipe_from_dict
from compressmamba.training.metrics import read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from hybrid_configs import tiny_config  # noqa: E402


def _skip(model_type):
    why = hybrid.available(model_type)
    if why:
        pytest.skip(why)


def _recipe(tmp_path, model_type, **red):
    return {
        "name": "hybrid-tiny",
        "seed": 0,
        "out_dir": str(tmp_path / "run"),
        "model": {"name": "hybrid", "config": tiny_config(model_type, vocab_size=256)},
        "data": {"name": "text_lm", "corpus": "python_stdlib", "max_bytes": 60_000, "seq_len": 32},
        "optim": {"lr": 3e-3, "schedule": "cosine", "warmup_frac": 0.1},
        "train": {"steps": 10, "batch_size": 4, "eval_every": 5, "eval_batches": 2, "progress": False},
        "reduction": {"mode": "fixed", "fraction": 0.5, "attempts": [3, 6], "calib_batches": 2, **red},
    }


# parameters a cut slices per SSM layer: in_proj, conv1d weight and bias (Mamba-2); A_log, x_proj
# and the B and C norms' weights (Jamba)
SLICED = {"bamba": 3, "granitemoehybrid": 3, "zamba2": 3, "falcon_h1": 3, "jamba": 4, "falcon_mamba": 2}
CASES = [
    ("bamba", "output"),
    ("granitemoehybrid", "output"),
    ("zamba2", "output"),
    ("nemotron_h", "balanced"),
    ("falcon_h1", "output"),
    ("jamba", "output"),
    ("falcon_mamba", "output"),
]


@pytest.mark.parametrize("model_type,method", CASES)
def test_hybrid_compresses_while_training_and_resumes(tmp_path, model_type, method):
    _skip(model_type)
    recipe = _recipe(tmp_path, model_type, method=method)
    tr = Trainer(recipe_from_dict(recipe))
    s = tr.fit()
    n = len(tr.model.ssm_layers())
    assert s["initial_state_sizes"] == [12] * n and s["final_state_sizes"] == [3] * n
    assert s["val_perplexity"] < 256
    cuts = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "cut"]
    assert [c["new_sizes"] for c in cuts] == [[6] * n, [3] * n]
    if method == "output":  # Adam moments of every sliced parameter carried over
        assert cuts[0]["optimizer"]["sliced"] == SLICED[model_type] * n and cuts[0]["optimizer"]["dropped"] == 0
    cfg = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert cfg["model_type"] == "compressmamba_" + model_type and cfg["state_sizes"] == [3] * n
    again = Trainer(recipe_from_dict(recipe), resume=tmp_path / "run")
    assert again.model.state_sizes == [3] * n
    for (k, a), b in zip(again.model.state_dict().items(), tr.model.state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu()), k
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert exported.state_sizes == [3] * n
    if model_type == "granitemoehybrid":  # a run folder compresses post hoc like a model folder
        out = tmp_path / "post_hoc"
        args = ["--tau", "0.3", "--calib-batches", "2", "--batch-size", "2", "--seq-len", "32", "--out", str(out)]
        assert main(["compress", str(tmp_path / "run"), *args]) == 0
        assert max(json.loads((out / "config.json").read_text())["state_sizes"]) <= 3


def test_post_hoc_compress_writes_ours_padded_and_uniform(tmp_path, capsys):
    _skip("bamba")
    fields = tiny_config("bamba", vocab_size=256)
    fields.pop("model_type")
    torch.manual_seed(0)
    transformers.BambaForCausalLM(transformers.BambaConfig(**fields)).save_pretrained(tmp_path / "stock")
    common = ["--calib-batches", "2", "--batch-size", "2", "--seq-len", "32"]
    assert main(["compress", str(tmp_path / "stock"), "--tau", "0.2", "--out", str(tmp_path / "ours"), *common]) == 0
    ours = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert ours["model_type"] == "compressmamba_bamba" and max(ours["state_sizes"]) < 12
    out = tmp_path / "padded"
    assert main(["compress", str(tmp_path / "stock"), "--tau", "0.2", "--format", "transformers", "--out", str(out),
                 *common]) == 0  # fmt: skip
    assert json.loads((out / "config.json").read_text())["mamba_d_state"] == 12
    assert type(transformers.AutoModelForCausalLM.from_pretrained(out)).__name__ == "BambaForCausalLM"
    out = tmp_path / "uniform"
    assert main(["compress", str(tmp_path / "stock"), "--uniform", "5", "--format", "transformers", "--out", str(out),
                 *common]) == 0  # fmt: skip
    assert json.loads((out / "config.json").read_text())["mamba_d_state"] == 5
    plain = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert [m.ssm_state_size for m in plain.modules() if hybrid.is_stock_mamba2_mixer(m)] == [5, 5]
    out = tmp_path / "uniform_tau"  # --uniform with --tau: every layer at the largest N the rule chose (6)
    assert main(["compress", str(tmp_path / "stock"), "--tau", "0.2", "--uniform", "--out", str(out), *common]) == 0
    assert json.loads((out / "config.json").read_text())["state_sizes"] == [max(ours["state_sizes"])] * 2
    capsys.readouterr()
    assert main(["compress", str(tmp_path / "stock"), "--out", str(tmp_path / "x")]) != 0
    assert "give --tau" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(hybrid.HYBRIDS))
def test_hybrid_ddp_two_processes_identical_cuts(tmp_path, model_type, two_ranks):
    _skip(model_type)
    recipe = tmp_path / "ddp.yaml"
    model = {"name": "hybrid", "config": tiny_config(model_type, vocab_size=256)}
    recipe.write_text(
        "name: ddp-hybrid\nseed: 2\n"
        f"out_dir: {tmp_path / 'run'}\n"
        f"model: {json.dumps(model)}\n"
        "data: {name: text_lm, corpus: python_stdlib, max_bytes: 60000, seq_len: 32}\n"
        "optim: {lr: 0.003}\n"
        "train: {steps: 8, batch_size: 4, eval_every: 4, eval_batches: 2, progress: false}\n"
        "reduction: {mode: tolerance, tau: 0.05, attempts: [3, 6], calib_batches: 2}\n"
    )
    text_lm(corpus="python_stdlib", max_bytes=60000, seq_len=32, seed=2)  # built once, before the ranks start
    r0, r1 = two_ranks(recipe, tmp_path / "run")
    assert len(r0) >= 2 and r0 == r1 and max(r0[-1]["sizes"]) < 12
