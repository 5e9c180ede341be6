"""Sequential CIFAR-10 (sCIFAR): each 32 × 32 image as 1024 steps of 3 colour features.

Reads the CIFAR-10 python pickles (``cifar-10-batches-py/``: ``data_batch_1`` … ``data_batch_5``,
``test_batch``) with numpy alone (torchvision does not import beside the CPU torch here and
rejects subset pickles by md5). Pixels are taken in row-major order, channels as features, and
normalised per channel (S4's mean/std by default, compressm's std on request); ``grayscale``
gives the LRA "Image" variant (1024 × 1). 10 % of train is held out as validation (seeded).

:class:`ImageSequences` (uint8 storage, normalised per item) is shared with the Pathfinder loader.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..registry import DataSplits, register_dataset

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
# Per-channel std: S4's values and the ones compressm (the paper's code) uses.
CIFAR_STD = {"s4": (0.247, 0.243, 0.261), "compressm": (0.2023, 0.1994, 0.2010)}
# LRA Image (grayscale) as S4 normalises it.
GRAY_MEAN, GRAY_STD = 122.6 / 255, 61.0 / 255


class ImageSequences(Dataset):
    """Items ``{"inputs": (L, C) float32, "labels": () long}`` from uint8 pixels.

    Args:
        pixels: (N, L, C) uint8 (a numpy array, possibly memory-mapped, or a tensor).
        labels: (N,) integer labels.
        mean, std: per-channel values applied to ``pixels / 255``; (C,) sequences.
        index: optional (M,) rows of ``pixels`` that make up this dataset (splits share storage).
    """

    def __init__(self, pixels, labels, mean, std, index=None):
        if pixels.ndim != 3:
            raise ValueError(f"pixels must be (N, L, C), got shape {tuple(pixels.shape)}")
        if len(pixels) != len(labels):
            raise ValueError(f"pixels ({len(pixels)}) and labels ({len(labels)}) differ in length")
        self.pixels = pixels
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self.index = np.arange(len(labels)) if index is None else np.asarray(index, dtype=np.int64)

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        j = int(self.index[i])
        x = torch.from_numpy(np.array(self.pixels[j], dtype=np.float32)) / 255.0  # a copy: memmaps are read-only
        return {"inputs": (x - self.mean) / self.std, "labels": self.labels[j]}


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random (train, val) partition of ``range(n)`` (each in random order); the
    validation part gets round(val_fraction · n) items."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).numpy()
    n_val = int(round(val_fraction * n))
    if n_val < 1 or n_val >= n:
        raise ValueError(f"val_fraction {val_fraction} of {n} items leaves an empty train or validation split")
    return order[n_val:], order[:n_val]


def find_cifar_root(path) -> Path:
    """The folder holding the pickles: ``path`` itself or ``path/cifar-10-batches-py``."""
    root = Path(os.path.expanduser(str(path)))
    for cand in (root, root / "cifar-10-batches-py"):
        if (cand / TEST_BATCH).is_file() or (cand / TRAIN_BATCHES[0]).is_file():
            break
    else:
        cand = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        if not (cand / name).is_file():
            raise FileNotFoundError(
                f"CIFAR-10 pickle {name!r} expected at {cand / name} (the python-version layout "
                f"cifar-10-batches-py/{{{', '.join(TRAIN_BATCHES)}, {TEST_BATCH}}})"
            )
    return cand


def read_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 pickle → pixels (n, 1024, 3) uint8 in row-major pixel order, labels (n,) int64."""
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise ValueError(f"{path}: not a CIFAR-10 batch (keys {sorted(d)}; expected 'data' and 'labels')")
    data = np.asarray(d["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: 'data' has shape {data.shape}, expected (n, 3072)")
    labels = np.asarray(d["labels"], dtype=np.int64)
    # rows are 1024 R, 1024 G, 1024 B (each 32 × 32 row-major) → (n, 1024 pixels, 3 channels)
    return np.ascontiguousarray(data.reshape(-1, 3, 1024).transpose(0, 2, 1)), labels


def load_cifar10(path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and test arrays: (50000, 1024, 3) uint8, (50000,), (10000, 1024, 3), (10000,)."""
    root = find_cifar_root(path)
    parts = [read_batch(root / name) for name in TRAIN_BATCHES]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = read_batch(root / TEST_BATCH)
    return xtr, ytr, xte, yte


def to_grayscale(pixels: np.ndarray) -> np.ndarray:
    """(n, L, 3) uint8 → (n, L, 1) uint8 with PIL's fixed-point ITU-R 601-2 luma, exactly what
    ``Image.convert("L")`` (and so torchvision's ``Grayscale``) computes."""
    p = pixels.astype(np.uint32)
    luma = (p[..., 0] * 19595 + p[..., 1] * 38470 + p[..., 2] * 7471 + 0x8000) >> 16
    return luma.astype(np.uint8)[..., None]


@register_dataset("scifar")
def scifar(
    path=None,
    seed: int = 0,
    val_fraction: float = 0.1,
    normalization: str = "s4",
    grayscale: bool = False,
    limit_train: int | None = None,
    **_,
) -> DataSplits:
    """sCIFAR from the CIFAR-10 python pickles under ``path``.

    Items: ``inputs`` (1024, 3) float32 (or (1024, 1) with ``grayscale``), ``labels`` () long.
    ``normalization``: ``"s4"`` (std 0.247, 0.243, 0.261), ``"compressm"`` (std 0.2023, 0.1994,
    0.2010) or ``"none"`` (pixels / 255).
    """
    if path is None:
        raise ValueError("scifar needs data.path: a folder holding cifar-10-batches-py (CIFAR-10 python pickles)")
    if normalization not in (*CIFAR_STD, "none"):
        raise ValueError(f"normalization must be one of {[*CIFAR_STD, 'none']}, got {normalization!r}")
    xtr, ytr, xte, yte = load_cifar10(path)
    if grayscale:
        xtr, xte = to_grayscale(xtr), to_grayscale(xte)
        mean, std = (GRAY_MEAN,), (GRAY_STD,)
    else:
        mean, std = CIFAR_MEAN, CIFAR_STD.get(normalization)
    if normalization == "none":
        mean, std = (0.0,) * xtr.shape[-1], (1.0,) * xtr.shape[-1]
    tr, va = split_indices(len(ytr), val_fraction, seed)
    if limit_train:
        tr = tr[: int(limit_train)]
    info = {"task": "classification", "d_input": xtr.shape[-1], "n_classes": 10, "seq_len": 1024, "pair": False}
    return DataSplits(
        ImageSequences(xtr, ytr, mean, std, index=tr),
        ImageSequences(xtr, ytr, mean, std, index=va),
        ImageSequences(xte, yte, mean, std),
        info,
    )
