"""compressmamba/atomic.py: files and folders appear whole or not at all."""

import pytest

from compressmamba.atomic import atomic_write_text, publish_folder


def _folder(path, **files):
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def _contents(path):
    return {p.name: p.read_text() for p in path.iterdir()}


def test_publish_replacing_swaps_the_whole_folder_and_leaves_nothing_beside_it(tmp_path):
    final = _folder(tmp_path / "model", **{"a.txt": "old", "gone.txt": "old"})
    tmp = _folder(tmp_path / ".model.x.tmp", **{"a.txt": "new", "b.txt": "new"})
    assert publish_folder(tmp, final, replace=True)
    assert _contents(final) == {"a.txt": "new", "b.txt": "new"}  # no old file mixed in
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp or old folder left


def test_publish_first_wins_keeps_the_existing_folder_and_removes_the_new_one(tmp_path):
    final = _folder(tmp_path / "split", **{"x.npy": "first"})
    tmp = _folder(tmp_path / ".split.tmp-host-2", **{"x.npy": "second"})
    assert not publish_folder(tmp, final, replace=False)
    assert _contents(final) == {"x.npy": "first"} and not tmp.exists()
    fresh = _folder(tmp_path / ".other.tmp", **{"y": "1"})
    assert publish_folder(fresh, tmp_path / "other", replace=False)
    assert _contents(tmp_path / "other") == {"y": "1"}


def test_a_failed_publish_puts_the_old_folder_back(tmp_path):
    final = _folder(tmp_path / "model", **{"a.txt": "old"})
    with pytest.raises(OSError):
        publish_folder(tmp_path / "missing.tmp", final, replace=True)
    assert _contents(final) == {"a.txt": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_atomic_write_text_replaces_and_cleans_stale_temps(tmp_path):
    target = tmp_path / "config.yaml"
    stale = tmp_path / ".config.yaml.123.abcd.tmp"
    stale.write_text("half")
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and not stale.exists()
