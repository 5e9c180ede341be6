"""The benchmark scripts run end to end on tiny CPU shapes (they time; these tests only check
that the tables come out, and that the target check reads the rows right)."""

from compressmamba.eval import bench_model, bench_scan


def test_bench_scan_prints_both_tables(capsys):
    bench_scan.main(
        ["--device", "cpu", "--batch", "1", "--dim", "8", "--seqlen", "40", "--states", "4,13", "--reps", "1"]
    )
    out = capsys.readouterr().out
    assert "| cpu | 13 |" in out and "| cpu | 4 |" in out and "speed-up vs N=13" in out
    assert "causal conv1d, width 4" in out and "| torch |" in out


def test_targets_report_met_and_missed(capsys):
    # (backend, N, fwd ms, fwd+bwd ms, fwd GB/s, fwd+bwd GB/s, note)
    rows = [
        ("triton", 128, 4.0, 10.0, 100.0, 100.0, ""),
        ("triton", 16, 1.0, 2.0, 1000.0, 500.0, ""),
        ("triton", 4, 0.5, 1.5, 1500.0, 600.0, ""),
        ("mamba_ssm", 16, 1.2, 2.5, 900.0, 400.0, ""),
    ]
    bench_scan._targets(rows, bw=3000.0)
    out = capsys.readouterr().out
    assert "vs mamba-ssm: 1.25x (target >= 1.0x: met)" in out
    assert "N=16 / N=128 fwd+bwd time: 0.20 (target <= 0.25: met)" in out
    assert "N=4 fwd share of copy bandwidth: 50% (target >= 60%: MISSED)" in out


def test_bench_model_runs(capsys):
    bench_model.main(
        ["--batch", "1", "--seqlen", "16", "--d-model", "16", "--layers", "1", "--gen-tokens", "2", "--reps", "1"]
    )
    out = capsys.readouterr().out
    assert "transformers" in out


def test_bench_ssd_prints_the_table(capsys):
    from compressmamba.eval import bench_ssd

    args = ["--device", "cpu", "--seqlen", "20", "--d-inner", "8", "--headdim", "4", "--chunk-size", "8"]
    rows = bench_ssd.main(args + ["--states", "4,13", "--reps", "1", "--backends", "cpu,ref"])
    out = capsys.readouterr().out
    assert "| cpu | 13 |" in out and "| ref | 4 |" in out and "speed-up vs N=13" in out
    assert len(rows) == 4 and all(r[2] > 0 and r[3] > 0 for r in rows)
