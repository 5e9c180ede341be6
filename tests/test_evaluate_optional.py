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
