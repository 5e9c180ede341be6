"""The SSD (Mamba-2) Triton kernels compile for an H100 (sm_90) without a GPU, through Triton's
real compiler and the ptxas in the triton wheel, at the mamba2-130m layer shape with the chunk
and warps the launchers pick; at these N none spills registers (tl.dot shapes, layouts and
register pressure are what only compilation sees)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"

CODE = """
import json
from compressmamba.eval.kernel_report import main
rows = main(["--ssd", "--launcher", "--states", "13,47"])
print("ROWS=" + json.dumps([(label, w, r) for label, w, r in rows]))
"""


@pytest.mark.slow
@pytest.mark.skipif(not any(BIN.glob("ptxas*")), reason="this triton wheel has no ptxas")
def test_ssd_kernels_compile_for_sm90_without_spills():
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=600)
    if "kernel_report uses Triton's launch internals" in res.stderr:
        pytest.skip(f"triton {triton.__version__}: " + res.stderr.strip().splitlines()[-1][:200])
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(res.stdout.split("ROWS=")[-1])
    labels = {label for label, _, _ in rows}
    kernels = (
        "ssd chunk states / dy outer",
        "ssd state passing",
        "ssd chunk output",
        "ssd chunk bwd",
        "ssd decode step",
    )
    assert {f"{k} N={n}" for k in kernels for n in (13, 47)} == labels
    for label, warps, r in rows:
        assert r["registers"] > 0, label
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, (label, warps, r)
