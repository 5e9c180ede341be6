import pytest
from compressmamba.eval.mamba_ablation import main

ARGS = ["--steps", "3", "--seeds", "0,1", "--keep", "4,2", "--n", "6", "--d-model", "16", "--layers", "2",
        "--seq-len", "32", "--val-batches", "2", "--calib-batches", "2", "--random-draws", "2",
        "--max-bytes", "60000"]  # fmt: skip


def test_ablation_table_has_every_method_and_level(tmp_path, capsys):
    res = main([*ARGS, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    for m in ("hankel", "hankel_mean", "output", "random", "smallest"):
        assert f"| {m} |" in out
        for k in (4, 2):
            assert len(res[(m, k)]) == 2  # one value per seed
    assert "keep 4/6 | keep 2/6" in out
    # cutting states of a trained model changes its loss: not every method can be a no-op
    assert any(abs(v) > 0 for vals in res.values() for v in vals)


def test_ablation_rejects_keep_outside_n():
    with pytest.raises(ValueError, match="--keep: 6 must be in"):
        main(["--keep", "6", "--n", "6"])
