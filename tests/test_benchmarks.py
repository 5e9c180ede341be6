"""The benchmark scripts run end to end on tiny CPU shapes: the tables come out, the target check
reads the rows right, and bench_model's columns agree with what a fake clock reported."""

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


def test_bench_model_times_a_training_step_and_generation_of_equal_models(capsys, monkeypatch):
    """bench_model's table against what it timed: a fake clock runs each timed call once and
    reports fixed seconds, so the tokens/s and speed-up columns are checked against hand
    arithmetic, the training call must leave gradients on every parameter, generation must add
    --gen-tokens tokens, and the two models compared must have the same parameter count."""
    seconds = {"compressmamba": [0.5, 0.25], "transformers": [2.0, 1.0]}  # (train, generate) per model
    seen = []

    def fake_time(fn, device, reps):
        model = fn.__defaults__[0]  # the benchmark binds its model as the lambda's default
        name = "compressmamba" if model.__module__.startswith("compressmamba") else "transformers"
        out = fn()
        seen.append((name, model, out))
        return seconds[name][sum(1 for s in seen if s[0] == name) - 1]

    monkeypatch.setattr(bench_model, "_time", fake_time)
    args = ["--batch", "2", "--seqlen", "16", "--d-model", "16", "--layers", "1", "--gen-tokens", "3", "--reps", "1"]
    bench_model.main(args)
    out = capsys.readouterr().out
    # 2 x 16 tokens in 0.5 s = 64 tokens/s; 3 generated tokens in 0.25 s = 12.0 tokens/s
    assert "| compressmamba | 16 | 0.500 | 64 | 12.0 |" in out
    assert "| transformers | 16 | 2.000 | 16 | 3.0 |" in out
    assert "| speed-up (train) | 16 | 4.0x | | |" in out
    models = {}
    for name, model, result in seen:
        models[name] = model
        if result is None:  # the training call: loss.backward() returns None
            assert all(p.grad is not None for p in model.parameters() if p.requires_grad), name
        else:  # generation: the 16-token prompt plus --gen-tokens new ones
            assert result.shape == (1, 16 + 3), name
    assert [s[0] for s in seen] == ["compressmamba", "compressmamba", "transformers", "transformers"]
    count = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    assert count["compressmamba"] == count["transformers"], count


def test_bench_ssd_prints_the_table(capsys):
    from compressmamba.eval import bench_ssd

    args = ["--device", "cpu", "--seqlen", "20", "--d-inner", "8", "--headdim", "4", "--chunk-size", "8"]
    rows = bench_ssd.main(args + ["--states", "4,13", "--reps", "1", "--backends", "cpu,ref"])
    out = capsys.readouterr().out
    assert "| cpu | 13 |" in out and "| ref | 4 |" in out and "speed-up vs N=13" in out
    assert len(rows) == 4 and all(r[2] > 0 and r[3] > 0 for r in rows)


def test_bench_mamba3_prints_its_table(capsys):
    from compressmamba.eval import bench_mamba3

    rows = bench_mamba3.main(
        ["--device", "cpu", "--seqlen", "24", "--d-inner", "16", "--headdim", "8", "--states", "8,12",
         "--mimo-rank", "2", "--chunk-size", "8", "--reps", "1", "--backends", "cpu,ref"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "| cpu | 12 |" in out and "| ref | 8 |" in out and "rank 2" in out
    assert all(r[2] is not None for r in rows)
