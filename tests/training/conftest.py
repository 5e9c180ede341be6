import json
import os
import subprocess
import sys

import pytest
import torch

from compressmamba.data.mnist import TensorDictDataset
from compressmamba.registry import DATASETS, DataSplits, register_dataset


def _toy(seed=0, n_train=120, n_val=40, n_test=40, length=24, **_):
    g = torch.Generator().manual_seed(1234)

    def make(n):
        x = torch.randn(n, length, 1, generator=g)
        y = (x[:, : length // 2, 0].mean(1) > x[:, length // 2 :, 0].mean(1)).long()
        return TensorDictDataset(x, y)

    return DataSplits(
        make(n_train),
        make(n_val),
        make(n_test),
        {"task": "classification", "d_input": 1, "n_classes": 2, "seq_len": length},
    )


if "toy_seq" not in DATASETS:
    register_dataset("toy_seq")(_toy)


@pytest.fixture
def toy_recipe(tmp_path):
    return {
        "name": "toy",
        "seed": 3,
        "out_dir": str(tmp_path / "run"),
        "model": {"name": "lru", "d_model": 6, "n_layers": 2, "state_size": 12, "dropout": 0.1},
        "data": {"name": "toy_seq"},
        "optim": {"lr": 3e-3, "schedule": "cosine", "warmup_frac": 0.1, "ssm_lr_factor": 0.5},
        "train": {"steps": 30, "batch_size": 8, "eval_every": 10, "log_every": 5, "progress": False},
        "reduction": {"mode": "fixed", "fraction": 0.25, "attempts": [8, 16]},
    }


@pytest.fixture
def two_ranks():
    """``run(recipe, run_dir)``: ``compressmamba train RECIPE`` on two CPU ranks, started by torchrun
    (the accelerate launcher path is test_trainer's), one thread each; returns each rank's rows of
    ``rank<i>_hashes.jsonl`` (tests/conftest.py asks for them). Build the run's token store
    before, so the ranks never race to build it; the time limit only guards against a hang (four
    interpreters importing torch can take minutes on a loaded 2-core machine)."""

    def run(recipe, run_dir):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "compressmamba", "train", str(recipe)]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        assert res.returncode == 0, res.stderr[-3000:]
        return [[json.loads(x) for x in (run_dir / f"rank{i}_hashes.jsonl").read_text().splitlines()] for i in (0, 1)]

    return run
