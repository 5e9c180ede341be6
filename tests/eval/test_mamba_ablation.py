import pytest
import torch
from compressmamba.eval.mamba_ablation import keep_indices, main

ARGS = ["--steps", "3", "--seeds", "0,1", "--keep", "4,2", "--n", "6", "--d-model", "16", "--layers", "2",
        "--seq-len", "32", "--val-batches", "2", "--calib-batches", "2", "--random-draws", "2",
        "--max-bytes", "60000"]  # fmt: skip
METHODS = ("hankel", "hankel_mean", "output", "random", "smallest")


def test_ablation_table_has_every_method_and_level(tmp_path, capsys):
    res = main([*ARGS, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    for m in METHODS:
        assert f"| {m} |" in out
        for k in (4, 2):
            assert len(res[(m, k)]) == 2  # one value per seed
            assert (m, k, "ft") not in res  # no fine-tune asked
    assert "keep 4/6 | keep 2/6" in out and "| balanced |" not in out  # Mamba-1 has no balanced cut
    # cutting states of a trained model changes its loss: not every method can be a no-op
    assert any(abs(v) > 0 for vals in res.values() for v in vals)


def test_mamba2_ablation_with_finetune_column(tmp_path, capsys):
    args = [*ARGS, "--model", "mamba2", "--head-dim", "8", "--n-groups", "2", "--seeds", "0", "--finetune", "2"]
    res = main([*args, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "keep 4/6 per group | + 2 ft | keep 2/6 per group | + 2 ft" in out
    for m in (*METHODS, "balanced"):
        assert f"| {m} |" in out
        for k in (4, 2):
            assert len(res[(m, k)]) == 1 and len(res[(m, k, "ft")]) == 1
    # the fine-tune changes the model: the rise after it differs from the rise before
    assert any(res[(m, k, "ft")][0] != res[(m, k)][0] for m in METHODS for k in (4, 2))


def test_keep_indices_per_group_same_count_own_states():
    g = torch.Generator().manual_seed(0)
    e = torch.rand(3, 7, generator=g, dtype=torch.float64)
    keep = keep_indices(e, 3, "largest", None)
    assert keep.shape == (3, 3)
    for row, k in zip(e, keep):
        assert set(k.tolist()) == set(torch.topk(row, 3).indices.tolist())
    assert keep_indices(e[0], 3, "smallest", None).tolist() == sorted(torch.topk(-e[0], 3).indices.tolist())
    draws = keep_indices(e, 4, "random", g)
    assert draws.shape == (3, 4) and all(r.unique().numel() == 4 for r in draws)


def test_ablation_rejects_keep_outside_n():
    with pytest.raises(ValueError, match="--keep: 6 must be in"):
        main(["--keep", "6", "--n", "6"])


def test_ablation_rejects_negative_finetune():
    with pytest.raises(ValueError, match="--finetune: -1 must be >= 0"):
        main(["--finetune", "-1"])
