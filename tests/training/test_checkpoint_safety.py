"""Checkpoints never run code, get the user's umask, and leave no temp files behind."""

import os
import subprocess
import sys

import pytest
import torch

from compressmamba.training import Trainer, recipe_from_dict
from compressmamba.training.checkpoint import FORMAT, atomic_save, load_checkpoint


class _Payload:
    """Unpickling this calls open(path, "w"): a file appears if the loader runs pickled code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _malicious_run(tmp_path):
    marker = tmp_path / "payload_ran"
    ck = tmp_path / "run" / "checkpoints" / "last.pt"
    ck.parent.mkdir(parents=True)
    torch.save({"format": FORMAT, "step": 1, "x": _Payload(marker)}, ck)
    return tmp_path / "run", marker


def test_checkpoint_with_a_pickle_payload_is_refused_and_runs_nothing(tmp_path, toy_recipe):
    run, marker = _malicious_run(tmp_path)
    with pytest.raises(ValueError, match=r"pickled Python objects.*refused"):
        load_checkpoint(run)
    with pytest.raises(ValueError, match="pickled Python objects"):
        Trainer(recipe_from_dict(toy_recipe), resume=run)
    assert not marker.exists()
    # the payload is live: an unsafe loader would have run it
    torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert marker.exists()


def test_compress_cli_refuses_a_pickle_payload_in_one_line(tmp_path):
    run, marker = _malicious_run(tmp_path)
    res = subprocess.run(
        [sys.executable, "-m", "compressmamba", "compress", str(run), "--tau", "0.1", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and not marker.exists()
    assert res.stderr.strip().count("\n") == 0 and "pickled Python objects" in res.stderr, res.stderr


def test_training_checkpoint_loads_with_weights_only(toy_recipe, tmp_path):
    raw = dict(toy_recipe, train={**toy_recipe["train"], "steps": 4, "eval_every": 2}, reduction={"mode": "none"})
    Trainer(recipe_from_dict(raw)).fit()
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ck["format"] == FORMAT and ck["step"] == 4 and ck["rng"]["numpy"]["keys"].numel() == 624


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_saved_files_get_the_users_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_save({"a": torch.ones(2)}, tmp_path / "ck.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "ck.pt").stat().st_mode & 0o777 == mode


def test_a_killed_write_leaves_no_temp_file_after_the_next_save(tmp_path):
    (tmp_path / ".last.pt.4242.deadbeef.tmp").write_bytes(b"half a checkpoint")  # what SIGKILL leaves
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"")  # and the temp name of older versions
    atomic_save({"a": torch.ones(2)}, tmp_path / "last.pt")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.parametrize(
    "content,problem",
    [
        (lambda good: good[: len(good) // 2], "corrupt or truncated"),
        (lambda good: os.urandom(4096), "corrupt or truncated"),
        (lambda good: b"", "corrupt or truncated"),
    ],
)
def test_corrupt_checkpoint_gets_one_line_naming_the_file(tmp_path, content, problem):
    good = tmp_path / "good.pt"
    atomic_save({"format": FORMAT, "w": torch.randn(1000)}, good)
    bad = tmp_path / "run" / "checkpoints" / "last.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(content(good.read_bytes()))
    with pytest.raises(ValueError) as e:
        load_checkpoint(tmp_path / "run")
    msg = str(e.value)
    assert problem in msg and str(bad) in msg and "\n" not in msg


def _overwrite_tensor_bytes(ck, n=4096):
    """Overwrite up to ``n`` bytes in the middle of the largest tensor record with 0xff (NaN as
    float32), keeping the file's size: the zip still opens and torch.load reads it happily."""
    import struct
    import zipfile

    with zipfile.ZipFile(ck) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(ck.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    k = min(n, info.file_size // 2)
    mid = start + info.file_size // 4
    raw[mid : mid + k] = b"\xff" * k
    ck.write_bytes(bytes(raw))


def test_a_checkpoint_damaged_in_place_is_refused_naming_the_previous_one(toy_recipe, tmp_path):
    """Defect: 4 KiB overwritten inside a tensor (same size) loaded, NaN went into Adam's state.
    Now the checksum refuses it in one line that names the intact previous checkpoint."""
    raw = dict(toy_recipe, train={**toy_recipe["train"], "steps": 4, "eval_every": 2}, reduction={"mode": "none"})
    Trainer(recipe_from_dict(raw)).fit()
    ckdir = tmp_path / "run" / "checkpoints"
    assert load_checkpoint(ckdir / "last.pt")["step"] == 4
    _overwrite_tensor_bytes(ckdir / "last.pt")
    for load in (
        lambda: load_checkpoint(tmp_path / "run"),
        lambda: Trainer(recipe_from_dict(raw), resume=tmp_path / "run"),
    ):
        with pytest.raises(ValueError) as e:
            load()
        msg = str(e.value)
        assert "checksum mismatch" in msg and str(ckdir / "last.pt") in msg and "\n" not in msg
        assert f"--resume {ckdir / 'prev.pt'}" in msg
    # the previous one is intact and resumes
    assert load_checkpoint(ckdir / "prev.pt")["step"] == 2
    tr = Trainer(recipe_from_dict(raw), resume=ckdir / "prev.pt")
    assert tr.step == 2


def test_compress_checks_its_numbers_before_reading_anything(tmp_path, capsys):
    """Probe (issue 25): --tau 1.5 was found by a layer after the model and the calibration data
    were loaded, in words that named no option."""
    from compressmamba.cli import main

    missing = str(tmp_path / "no_such_model")
    assert main(["compress", missing, "--tau", "1.5", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--tau 1.5" in err and "[0, 1)" in err, err
    assert main(["compress", missing, "--tau", "0.1", "--seq-len", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--seq-len 0" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["convert", "compress"])
def test_a_destination_that_is_a_file_is_refused_before_the_work(tmp_path, capsys, command):
    """Probe (issue 25): convert RUN FILE logged transformers' "should be a directory", wrote
    nothing, and said "wrote ... checkpoint to FILE" with exit 0."""
    from compressmamba.cli import main

    dst = tmp_path / "a_file"
    dst.write_text("mine")
    src = str(tmp_path / "no_such_model")
    args = ["convert", src, str(dst)] if command == "convert" else ["compress", src, "--tau", "0.1", "--out", str(dst)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{dst} is a file" in err, err
    assert dst.read_text() == "mine"
