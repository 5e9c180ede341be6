"""`compressmamba env`, and the declared dependency ranges agreeing in every place they are written."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from compressmamba import compat
from compressmamba.env import env_info, format_env

ROOT = Path(__file__).resolve().parents[1]


def test_env_names_every_package_and_the_support_status():
    info = env_info()
    for name in ("python", "torch", "triton", "transformers", "accelerate", "datasets", "mamba-ssm", "causal-conv1d"):
        assert info[name], name
    assert info["mamba-ssm"] == "not installed"  # never importable in the CPU test environment
    assert "selective scan" in info["CPU kernels"]
    assert info[f"transformers supported ({','.join(compat.SUPPORTED['transformers'])})"] == "ok"
    text = format_env(info)
    assert text.count("\n") == len(info) - 1 and "- transformers:" in text


def test_env_command_prints_the_report():
    out = subprocess.run(
        [sys.executable, "-m", "compressmamba", "env"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "transformers" in out and "CUDA device" in out and "supported" in out


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
