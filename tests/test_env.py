"""`compressmamba env`, and the declared dependency ranges agreeing in every place they are written."""

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

import compressmamba
from compressmamba import compat, env
from compressmamba.env import env_info, format_env

ROOT = Path(__file__).resolve().parents[1]


def _without(monkeypatch, *dists):
    """Fake the absence of ``dists`` (the GPU machines this project targets have mamba-ssm)."""
    real = env._version
    monkeypatch.setattr(env, "_version", lambda dist: None if dist in dists else real(dist))


def _with_fake_dist(monkeypatch, tmp_path, dist: str, module: str, version: str):
    """Fake an installed distribution: its metadata and an importable module on sys.path."""
    info = tmp_path / f"{module}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (tmp_path / module).mkdir(parents=True)
    (tmp_path / module / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_env_names_every_package_and_the_support_status(monkeypatch):
    _without(monkeypatch, "mamba-ssm", "causal-conv1d")
    info = env_info()
    for name in ("python", "torch", "triton", "transformers", "accelerate", "datasets", "mamba-ssm", "causal-conv1d"):
        assert info[name], name
    assert info["mamba-ssm"] == "not installed" and info["causal-conv1d"] == "not installed"
    assert "selective scan" in info["CPU kernels"]
    assert info[f"transformers supported ({','.join(compat.SUPPORTED['transformers'])})"] == "ok"
    text = format_env(info)
    assert text.count("\n") == len(info) - 1 and "- transformers:" in text


def test_env_with_mamba_ssm_and_causal_conv1d_installed(monkeypatch, tmp_path):
    _with_fake_dist(monkeypatch, tmp_path / "a", "mamba-ssm", "mamba_ssm", "2.2.4")
    _with_fake_dist(monkeypatch, tmp_path / "b", "causal-conv1d", "causal_conv1d", "1.5.0")
    info = env_info()
    assert info["mamba-ssm"] == "2.2.4" and info["causal-conv1d"] == "1.5.0"
    assert "causal-conv1d" in env._backends("cuda")


def test_env_command_prints_the_report():
    """The printed report is env_info() of this interpreter, one ``- key: value`` line per entry."""
    import torch
    import transformers

    out = subprocess.run(
        [sys.executable, "-m", "compressmamba", "env"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    rows = dict(line[2:].split(":", 1) for line in out.splitlines() if line.startswith("- "))
    rows = {k.strip(): v.strip() for k, v in rows.items()}
    assert list(rows) == list(env_info()), "the report's keys, in order"
    # the installed distributions' versions (a CUDA wheel's torch.__version__ may add a local tag, +cu130,
    # that its metadata does not carry)
    assert rows["torch"] == importlib.metadata.version("torch") and torch.__version__.startswith(rows["torch"])
    assert rows["transformers"] == transformers.__version__
    assert rows["compressmamba"] == compressmamba.__version__
    if not torch.cuda.is_available():
        assert rows["CUDA device"] == "none"
    assert rows["transformers supported (>=4.45.2,<6)"] == "ok"
    assert rows["model mamba"].endswith("(default output); loads compressmamba, mamba, mamba-ssm Mamba1")


@pytest.mark.parametrize(
    "version,expected", [("4.45.2", "ok"), ("5.24.0", "ok"), ("4.44.0", "outside"), ("6.0.0", "outside"), (None, "not")]
)
def test_version_status(version, expected):
    assert compat.version_status("transformers", version).startswith(expected)


def test_declared_ranges_agree_with_pyproject_and_the_lowest_constraints():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {re.match(r"[A-Za-z0-9_.-]+", d).group(0): d for d in deps}
    pins = dict(
        line.split("==")
        for line in (ROOT / ".ci/constraints-lowest.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for name, (lo, hi) in compat.SUPPORTED.items():
        assert declared[name] == f"{name}{lo},{hi}", name
        assert pins[name].startswith(lo.lstrip(">=")), (name, pins[name])
