"""eval/bench_cut.py end to end on a tiny shape, in process: each case runs, reports its time and
peak memory, and the table scales a reduced-depth case's CPU time to the full depth."""

import json

import pytest
from compressmamba.eval import bench_cut

TINY = ["--d-model", "32", "--layers", "2", "--state", "8", "--head-dim", "16", "--vocab", "50", "--batch", "2",
        "--seqlen", "19"]  # fmt: skip


@pytest.mark.parametrize("family", ["mamba", "mamba2"])
@pytest.mark.parametrize("case", ["forward", "train", "stats", "reference"])
def test_each_case_reports_time_and_peak(capsys, family, case):
    bench_cut.main([*TINY, "--family", family, "--reference-layers", "1", "--case", case])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["case"] == case and row["layers"] == (1 if case == "reference" else 2)
    assert row["seconds"] > 0 and row["cpu_s"] >= 0 and row["peak_mb"] >= row["floor_mb"] > 0


def test_table_scales_cpu_time_to_the_full_depth(capsys):
    a = bench_cut._parser().parse_args(TINY)
    rows = [{"case": "reference", "layers": 1, "seconds": 3.0, "cpu_s": 5.0, "floor_mb": 100.0, "peak_mb": 350.0}]
    bench_cut._table(a, rows)
    assert "| reference | 1 | 3.00 | 5.00 | 10.00 | 350 | 250 |" in capsys.readouterr().out


def test_unknown_case_is_named():
    with pytest.raises(SystemExit, match="--cases warp: expected some of"):
        bench_cut.main([*TINY, "--cases", "warp"])
