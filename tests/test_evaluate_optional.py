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
