import pickle

import numpy as np
import pytest
import torch

from compressmamba.data.cifar import CIFAR_MEAN, CIFAR_STD, TEST_BATCH, TRAIN_BATCHES, read_batch, scifar
from compressmamba.registry import build_data


def _write_cifar(root, n_per_batch=13, seed=0):
    """Tiny CIFAR-10 in the python-pickle layout; returns the raw (n, 3072) rows and labels per file."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    raw = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n_per_batch).tolist()
        d = {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": [b"x.png"] * n_per_batch}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f, protocol=2)
        raw[name] = (data, np.array(labels))
    return raw


def test_batch_layout_is_row_major_pixels_with_rgb_features(tmp_path):
    raw = _write_cifar(tmp_path)
    x, y = read_batch(tmp_path / "cifar-10-batches-py" / "data_batch_2")
    data, labels = raw["data_batch_2"]
    assert x.shape == (13, 1024, 3) and x.dtype == np.uint8 and np.array_equal(y, labels)
    img = data[4].reshape(3, 32, 32)  # channel planes, each 32 × 32 row-major
    for r, c in [(0, 0), (0, 31), (5, 17), (31, 2)]:
        assert np.array_equal(x[4, r * 32 + c], img[:, r, c])


def test_scifar_normalisation_split_and_seeding(tmp_path):
    raw = _write_cifar(tmp_path)
    d = build_data({"name": "scifar", "path": str(tmp_path)}, seed=3)
    n_train = 5 * 13
    assert len(d.train) + len(d.val) == n_train and len(d.val) == round(0.1 * n_train) and len(d.test) == 13
    assert d.info == {"task": "classification", "d_input": 3, "n_classes": 10, "seq_len": 1024, "pair": False}
    item = d.test[7]
    assert item["inputs"].shape == (1024, 3) and item["inputs"].dtype == torch.float32
    assert item["labels"].dtype == torch.long and item["labels"] == raw[TEST_BATCH][1][7]
    pix = raw[TEST_BATCH][0][7].reshape(3, 1024).T.astype(np.float64) / 255
    want = (pix - np.array(CIFAR_MEAN)) / np.array(CIFAR_STD["s4"])
    np.testing.assert_allclose(item["inputs"].numpy(), want, rtol=1e-5, atol=1e-5)
    # train and validation partition the 65 training images; the seed decides which
    all_train = np.concatenate([raw[n][0] for n in TRAIN_BATCHES]).reshape(-1, 3, 1024).transpose(0, 2, 1)
    seen = sorted(
        int(np.flatnonzero((all_train == _pixels(ds[i])).all(axis=(1, 2)))[0])
        for ds in (d.train, d.val)
        for i in range(len(ds))
    )
    assert seen == list(range(n_train))
    again = scifar(path=tmp_path, seed=3)
    other = scifar(path=tmp_path, seed=4)
    assert np.array_equal(again.val.index, d.val.index) and not np.array_equal(other.val.index, d.val.index)


def _pixels(item):
    mean, std = torch.tensor(CIFAR_MEAN), torch.tensor(CIFAR_STD["s4"])
    return np.rint(((item["inputs"] * std + mean) * 255).numpy()).astype(np.uint8)


def test_compressm_std_and_grayscale(tmp_path):
    raw = _write_cifar(tmp_path)
    d = scifar(path=tmp_path / "cifar-10-batches-py", normalization="compressm")
    pix = raw[TEST_BATCH][0][0].reshape(3, 1024).T.astype(np.float64) / 255
    want = (pix - np.array(CIFAR_MEAN)) / np.array(CIFAR_STD["compressm"])
    np.testing.assert_allclose(d.test[0]["inputs"].numpy(), want, rtol=1e-5, atol=1e-5)
    g = scifar(path=tmp_path, grayscale=True)
    assert g.info["d_input"] == 1 and g.test[0]["inputs"].shape == (1024, 1)
    from PIL import Image

    img = raw[TEST_BATCH][0][0].reshape(3, 32, 32).transpose(1, 2, 0)
    luma = np.asarray(Image.fromarray(img).convert("L"), dtype=np.float64).reshape(-1)
    got = g.test[0]["inputs"][:, 0].numpy().astype(np.float64) * (61.0 / 255) + 122.6 / 255
    np.testing.assert_allclose(got * 255, luma, atol=1e-3)


def test_wrong_layout_names_the_missing_file(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        scifar(path=tmp_path)
    with pytest.raises(FileNotFoundError, match="data_batch_1. expected at .*nowhere"):
        scifar(path=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="normalization"):
        scifar(path=tmp_path, normalization="imagenet")
    with pytest.raises(ValueError, match="path"):
        scifar()
