"""lm-eval is an optional extra: without it `compressmamba evaluate` says how to install it."""

import sys

from compressmamba.cli import main


def test_missing_lm_eval_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` raises ImportError
    assert main(["evaluate", str(tmp_path), "--tasks", "piqa"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "compressmamba evaluate: error: lm-evaluation-harness is not installed: "
        "pip install 'compressmamba[eval]' (or pip install lm_eval)"
    )
    assert main(["compress", str(tmp_path), "--tau", "0.1", "--out", str(tmp_path / "o"), "--evaluate", "piqa"]) == 2
    assert "--evaluate: lm-evaluation-harness is not installed" in capsys.readouterr().err


def test_bad_options_are_one_line_errors(capsys, tmp_path):
    import pytest

    pytest.importorskip("lm_eval", reason="the options are checked once lm-eval is there")
    for opts, msg in (
        (["--limit", "0"], "--limit 0: expected a positive number"),
        (["--batch-size", "0"], "--batch-size 0: expected a positive integer"),
        (["--device", "gpu7"], "--device 'gpu7': expected cpu, cuda, cuda:N or mps"),
        (["--include-path", str(tmp_path / "nope")], "expected a folder of task YAML files"),
        (["--tasks", " , "], "expected comma-separated task names"),
    ):
        assert main(["evaluate", str(tmp_path), "--tasks", "piqa", *opts]) == 2
        assert msg in capsys.readouterr().err


def test_compress_saves_the_tokenizer_beside_the_cut_model(tmp_path):
    """A cut model of a BPE vocabulary is a folder that evaluates on its own (no --tokenizer)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from compressmamba.evaluate import load_for_eval
    from compressmamba.models import build_mamba

    text = ["calibration text, plain and simple. " * 40, "another document of plain words. " * 40]
    for i, t in enumerate(text):
        (tmp_path / f"calib{i}.txt").write_text(t)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(
        text, trainers.BpeTrainer(vocab_size=290, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet)
    )
    tok.save(str(tmp_path / "tokenizer.json"))
    torch.manual_seed(0)
    build_mamba(d_model=16, n_layers=2, state_size=6, vocab_size=tok.get_vocab_size()).save_pretrained(tmp_path / "m")
    args = ["compress", str(tmp_path / "m"), "--tau", "0.3", "--calib", str(tmp_path / "calib*.txt"), "--seq-len", "16"]
    args += ["--batch-size", "2", "--calib-batches", "2", "--tokenizer", str(tmp_path / "tokenizer.json")]
    assert main([*args, "--out", str(tmp_path / "small")]) == 0
    model, hf_tok = load_for_eval(str(tmp_path / "small"))
    assert hf_tok.encode("plain words") == tok.encode("plain words").ids
