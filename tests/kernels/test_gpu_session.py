"""eval/gpu_session.sh cannot rot before a GPU comes: its step limits add up to under the
8 minutes one device call allows it, and its dry run (every step, tiny shapes, on the CPU under
Triton's interpreter) ends with every table in $OUT."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "eval" / "gpu_session.sh"
STEPS = ("setup", "tests_kernels", "scan_fp32", "scan_bf16", "ssd_fp32", "ssd_bf16", "model", "model_vs_transformers",
         "fsdp2")


def test_step_limits_add_up_to_under_eight_minutes():
    out = subprocess.run(["bash", str(SCRIPT), "--limits"], capture_output=True, text=True, check=True).stdout
    limits = dict(line.split() for line in out.splitlines())
    total = int(limits.pop("TOTAL"))
    assert total == sum(int(v) for v in limits.values()) < 480
    # every step runs under one of these limits, each limit used by one step
    used = re.findall(r'^(?:\w+=\S+ )?step \w+ "\$(LIM_\w+)"', SCRIPT.read_text(), re.M)
    assert sorted(used) == sorted(limits) and len(used) == len(STEPS)


def test_the_extra_script_parses_and_fits_too():
    extra = ROOT / "eval" / "gpu_session_extra.sh"
    subprocess.run(["bash", "-n", str(extra)], check=True)
    out = subprocess.run(["bash", str(extra), "--limits"], capture_output=True, text=True, check=True).stdout
    assert int(out.split()[-1]) < 480


@pytest.mark.slow
def test_dry_run_runs_every_step(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    env.pop("TRITON_INTERPRET", None)  # the script sets it
    res = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    log = (tmp_path / "session.txt").read_text()
    for name in STEPS:
        assert f"step {name}: exit 0" in log, log
    assert "collected" in (tmp_path / "tests_kernels.log").read_text()
    scan = (tmp_path / "bench_scan.md").read_text()
    assert scan.count("| triton | 8 |") == 2 and "bf16" in scan and "causal conv1d" in scan
    assert "fwd share of copy bandwidth" in scan
    ssd = (tmp_path / "bench_ssd.md").read_text()
    assert ssd.count("| triton | 8 |") == 2 and "device copy bandwidth" in ssd
    model = (tmp_path / "bench_model.md").read_text()
    assert "| compressmamba | 2..3 (mean 2.5) |" in model and "| transformers | 4 |" in model
    assert "train step at N=2..3 (mean 2.5) vs N=4" in model
