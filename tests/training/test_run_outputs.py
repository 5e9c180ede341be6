"""Every run ends with RUN_DIR/model/; trackers (TensorBoard here) receive the run's metrics."""

import json
from pathlib import Path

import pytest
import torch

import compressmamba  # noqa: F401  (registers the model type with transformers' Auto classes)
from compressmamba.cli import main
from compressmamba.training import Trainer, recipe_from_dict
from compressmamba.training.config import apply_overrides
from compressmamba.training.export import load_classifier


def _lm_recipe(tmp_path, **data):
    return {
        "name": "lm-out",
        "seed": 0,
        "out_dir": str(tmp_path / "run"),
        "model": {"name": "mamba", "d_model": 16, "n_layers": 2, "state_size": 8},
        "data": {"name": "text_lm", "corpus": "python_stdlib", "max_bytes": 40_000, "seq_len": 32, **data},
        "optim": {"lr": 3e-3},
        "train": {"steps": 4, "batch_size": 2, "eval_every": 4, "eval_batches": 1, "progress": False},
        "reduction": {"mode": "fixed", "fraction": 0.5, "attempts": [2], "calib_batches": 1, "plots": False},
    }


def _word_tokenizer(path: Path) -> Path:
    """A small local tokenizer.json (word level over a fixed vocabulary), no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["def", "return", "self", "import", "class", "if", "else", "for", "in", "(", ")", ":", "=", ","]
    vocab = {"<unk>": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return path


def test_lm_run_ends_with_a_hugging_face_model_and_its_tokenizer(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, MambaForCausalLM

    tok_file = _word_tokenizer(tmp_path / "tokenizer.json")
    tr = Trainer(recipe_from_dict(_lm_recipe(tmp_path, tokenizer=str(tok_file))))
    tr.fit()
    out = tmp_path / "run" / "model"
    files = {f.name for f in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= files
    assert json.loads((out / "config.json").read_text())["state_sizes"] == [4, 4]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.state_sizes == [4, 4]
    tok = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tok("def ( self ) : return self")["input_ids"]])
    assert ids.max() < 16 and (ids > 0).all()  # the run's own vocabulary, not bytes
    with torch.no_grad():
        ref = tr.model.eval()(input_ids=ids).logits
        torch.testing.assert_close(model(input_ids=ids).logits, ref)
        # convertible to plain transformers, outputs unchanged
        assert main(["convert", str(out), str(tmp_path / "hf"), "--to", "transformers"]) == 0
        hf = MambaForCausalLM.from_pretrained(tmp_path / "hf")
        torch.testing.assert_close(hf(input_ids=ids).logits.float(), ref, rtol=1e-4, atol=1e-4)


def test_byte_level_lm_run_writes_no_tokenizer_files(tmp_path):
    raw = _lm_recipe(tmp_path)
    raw["train"]["steps"], raw["reduction"] = 2, {"mode": "none"}
    Trainer(recipe_from_dict(raw)).fit()
    files = {f.name for f in (tmp_path / "run" / "model").iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json"} <= files
    assert not any(f.startswith("tokenizer") for f in files)
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".model")] == []


def _event_data(logdir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = [p.parent for p in logdir.rglob("events.out.tfevents.*")]
    assert runs, f"no event files under {logdir}"
    scalars, images = {}, {}
    for run in set(runs):
        ea = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
        ea.Reload()
        for tag in ea.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in ea.Scalars(tag)]
        for tag in ea.Tags()["images"]:
            images[tag] = [(e.step, e.width, e.height) for e in ea.Images(tag)]
    return scalars, images


def test_classifier_run_writes_safetensors_and_logs_to_tensorboard(toy_recipe, tmp_path):
    raw = apply_overrides(toy_recipe, ["train.report_to=tensorboard", "train.steps=20", "reduction.attempts=[8, 16]"])
    tr = Trainer(recipe_from_dict(raw))
    summary = tr.fit()
    # the final classifier: safetensors + config, loadable with the documented loader
    out = Path(raw["out_dir"]) / "model"
    assert {f.name for f in out.iterdir()} == {"config.json", "model.safetensors"}
    clf = load_classifier(out)
    assert clf.state_sizes == summary["final_state_sizes"] == [6, 6]
    x = torch.randn(3, 24, 1)
    with torch.no_grad():
        torch.testing.assert_close(clf(inputs=x).logits, tr.model.eval()(inputs=x).logits)
    # the trackers got loss, lr, sizes, throughput, validation metrics, every cut and the plots
    scalars, images = _event_data(Path(raw["out_dir"]) / "trackers")
    assert [s for s, _ in scalars["train/loss"]] == [5, 10, 15, 20]
    assert {"train/lr", "train/samples_per_s", "val/accuracy", "val/loss", "test/accuracy"} <= set(scalars)
    assert scalars["state_size/layer0"][0] == (5, 12.0) and scalars["state_size/layer1"][-1][1] == 6.0
    assert [(s, v) for s, v in scalars["cut/layer0/new"]] == [(8, 9.0), (16, 6.0)]
    assert "cut/layer1/energy_kept" in scalars
    assert [s for s, _, _ in images["energy_spectrum"]] == [8, 16] and images["energy_spectrum"][0][1] > 100


def test_classifier_loader_reports_broken_files_in_one_line(toy_recipe, tmp_path):
    raw = apply_overrides(toy_recipe, ["train.steps=4", "reduction.mode=none", "reduction.attempts=null"])
    Trainer(recipe_from_dict(raw)).fit()
    out = Path(raw["out_dir"]) / "model"
    weights = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match=r"model.safetensors is corrupt or truncated") as e:
        load_classifier(out)
    assert "\n" not in str(e.value)
    (out / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
        load_classifier(out)
    (out / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing model.safetensors"):
        load_classifier(out)


def test_mamba_classifier_run_writes_a_loadable_classifier(toy_recipe, tmp_path):
    raw = apply_overrides(
        toy_recipe,
        ["train.steps=4", "train.report_to=[tensorboard]", "reduction.attempts=[2]", "reduction.fraction=0.5"],
    )
    raw["model"] = {"name": "mamba", "d_model": 8, "n_layers": 1, "state_size": 6}
    tr = Trainer(recipe_from_dict(raw))
    tr.fit()
    clf = load_classifier(Path(raw["out_dir"]) / "model")
    assert type(clf).__name__ == "MambaClassifier" and clf.state_sizes == tr.model.state_sizes == [3]
    x = torch.randn(2, 24, 1)
    with torch.no_grad():
        torch.testing.assert_close(clf(inputs=x).logits, tr.model.eval()(inputs=x).logits)
    scalars, _ = _event_data(Path(raw["out_dir"]) / "trackers")
    assert scalars["cut/layer0/new"] == [(2, 3.0)]
