"""Broken model folders and unreachable hub ids fail at once, in one line naming the file or id."""

import os
import time

import pytest

from compressmamba.cli import main
from compressmamba.models import files
from compressmamba.models.loading import load_pretrained
from compressmamba.models.mamba import CompressMambaConfig, CompressMambaForCausalLM


@pytest.fixture
def model_dir(tmp_path):
    m = CompressMambaForCausalLM(
        CompressMambaConfig(vocab_size=64, hidden_size=8, num_hidden_layers=2, state_sizes=[4, 3])
    )
    m.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def _weights(d):
    return d / "model.safetensors"


@pytest.mark.parametrize(
    "damage,err,names,says",
    [
        (
            lambda d: _weights(d).write_bytes(_weights(d).read_bytes()[:200]),
            ValueError,
            "model.safetensors",
            "truncated",
        ),
        (
            lambda d: _weights(d).write_bytes(_weights(d).read_bytes()[:-16]),
            ValueError,
            "model.safetensors",
            "truncated",
        ),
        (lambda d: _weights(d).write_bytes(os.urandom(4096)), ValueError, "model.safetensors", "corrupt"),
        (lambda d: (d / "config.json").write_text('{"model_type": '), ValueError, "config.json", "not valid JSON"),
        (lambda d: _weights(d).unlink(), FileNotFoundError, "", "no weights file"),
        (lambda d: (d / "config.json").unlink(), FileNotFoundError, "", "no config.json"),
    ],
)
def test_broken_model_folder_gets_one_line_naming_the_file(model_dir, damage, err, names, says, capsys, tmp_path):
    damage(model_dir)
    with pytest.raises(err) as e:
        load_pretrained(model_dir)
    msg = str(e.value)
    assert says in msg and str(model_dir / names) in msg and "\n" not in msg
    assert main(["convert", str(model_dir), str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0]


def test_intact_folder_still_loads(model_dir):
    assert load_pretrained(model_dir).state_sizes == [4, 3]


def test_hub_id_with_hf_hub_offline_fails_in_seconds(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(
        FileNotFoundError, match=r"'someone/no-such-mamba'.*not in the Hugging Face cache.*HF_HUB_OFFLINE"
    ):
        load_pretrained("someone/no-such-mamba")
    assert time.time() - t0 < 5


def test_hub_id_without_network_fails_in_seconds(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(files, "_hub_reachable", lambda timeout=3.0: False)
    t0 = time.time()
    with pytest.raises(FileNotFoundError, match=r"cannot be reached \(no network\)"):
        CompressMambaForCausalLM.from_pretrained("someone/no-such-mamba")
    assert time.time() - t0 < 5


def test_cached_hub_id_offline_reads_the_cache_only(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(files, "_cached", lambda *a: True)
    assert files.guard_hub_id("org/name", {"revision": "main"}) == {"revision": "main", "local_files_only": True}
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(files, "_hub_reachable", lambda timeout=3.0: True)
    assert files.guard_hub_id("org/name", {}) == {}


def test_a_missing_path_is_not_taken_for_a_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a local folder"):
        load_pretrained(tmp_path / "nowhere" / "model")


def test_resolve_of_an_uncached_hub_id_offline_fails_in_seconds(monkeypatch):
    from compressmamba.models.loading import resolve

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set"):
        resolve("someone/no-such-mamba")
    assert time.time() - t0 < 5
