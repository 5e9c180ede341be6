"""eval/study_flops.py: the compute-matched arms, the curves against FLOPs, equal-FLOPs comparisons."""

import math

import pytest
from compressmamba.eval import mamba_study as ms
from compressmamba.eval import study_flops as sf

TINY = {
    "name": "lm/flops-tiny",
    "seed": 0,
    "model": {"name": "mamba", "d_model": 8, "n_layers": 2, "state_size": 6},
    "data": {"name": "text_lm", "corpus": "python_stdlib", "seq_len": 16, "max_bytes": 30_000},
    "optim": {"lr": 3e-3, "schedule": "cosine", "warmup_steps": 2},
    "train": {"steps": 8, "batch_size": 2, "eval_every": 4, "eval_batches": 1, "log_every": 2},
    "reduction": {"mode": "fixed", "fraction": 0.5, "attempts": [3], "calib_batches": 2, "plots": False},
}


def test_matched_steps_and_the_stretched_schedule():
    assert sf.matched_steps(1000.0, 300.0) == 4  # 3 steps spend 900 < 1000
    assert sf.matched_steps(900.0, 300.0) == 3  # an exact multiple: no step more
    assert sf.matched_steps(901.0, 300.0) == 4
    with pytest.raises(ValueError, match="step_flops = 0"):
        sf.matched_steps(10.0, 0)
    r = sf.stretch(TINY, 15)
    assert r["train"]["steps"] == 15 and r["optim"]["warmup_steps"] == 4  # 2 x 15/8 = 3.75
    assert r["train"]["eval_every"] == 8  # 4 x 15/8 = 7.5
    assert r["optim"]["schedule"] == "cosine" and TINY["train"]["steps"] == 8  # the input is not modified


def test_at_flops_interpolates_in_log_flops_and_never_extrapolates():
    pts = [{"flops": 1e6, "loss": 2.0}, {"flops": 4e6, "loss": 1.0}, {"flops": 8e6, "loss": 0.5}]
    assert sf.at_flops(pts, 2e6, "loss") == pytest.approx(1.5, rel=1e-12)  # log 2 / log 4 of the way
    w = math.log(6e6 / 4e6) / math.log(2)
    assert sf.at_flops(pts, 6e6, "loss") == pytest.approx(1.0 - 0.5 * w, rel=1e-12)
    assert sf.at_flops(pts, 8e6, "loss") == 0.5 and sf.at_flops(pts, 1e6, "loss") == 2.0
    assert sf.at_flops(pts, 9e6, "loss") is None and sf.at_flops(pts, 5e5, "loss") is None
    # compressed ends at 8e6, direct at 4e6: compared at 4e6, compressed read off its curve
    results = {
        "compressed": {0: {"curve": pts}},
        "direct": {0: {"curve": [{"flops": 2e6, "loss": 1.6}, {"flops": 4e6, "loss": 1.2}]}},
    }
    c = sf.equal_flops(results, "perplexity")["direct"]
    assert c["flops"] == [4e6] and c["diffs"] == pytest.approx([100 * (math.exp(1.0 - 1.2) - 1)], rel=1e-12)


def _hand_step_flops(sizes, h=8, vocab=256, b=2, l=17):
    """One training step of the tiny Mamba-1 LM (d = 16 channels, dt rank 1, 4 conv taps with
    bias), written out: 3x every product (forward, both gradients), the conv 3x, its bias 2x, the
    scan 7 + 15 per (token, channel, state), 7 + 14 per (token, channel)."""
    T, d = b * l, 2 * h
    total = 3 * 2 * T * h * vocab  # lm_head
    for n in sizes:
        total += 3 * 2 * T * h * 2 * d  # in_proj
        total += 3 * 2 * 4 * d * T + 2 * d * T  # depthwise conv and its bias
        total += 3 * 2 * T * d * (1 + 2 * n)  # x_proj
        total += 3 * 2 * T * 1 * d  # dt_proj's product
        total += (7 + 15) * T * d * n + (7 + 14) * T * d  # the scan
        total += 3 * 2 * T * d * h  # out_proj
    return total


def test_matched_arm_spends_the_compressed_runs_flops_and_the_report_compares_at_equal_flops(tmp_path):
    arms = ["compressed", "direct", "direct_matched"]
    res = ms.run_study(TINY, [0], arms, tmp_path)
    for seed in (0,):
        c, d, m = (res[a][seed] for a in arms)
        assert c["sizes"] == d["sizes"] == m["sizes"] == [3, 3]
        step = _hand_step_flops(c["sizes"])
        want = math.ceil(c["train_flops"] / step)
        assert m["steps"] == want > d["steps"] == 8
        assert m["train_flops"] == want * step and c["train_flops"] <= m["train_flops"] < c["train_flops"] + step
        assert d["train_flops"] == 8 * step < c["train_flops"]
        assert [p["step"] for p in d["curve"]] == [4, 8] and d["curve"][-1]["flops"] == d["train_flops"]
        assert m["curve"][-1]["step"] == want and len(m["curve"]) == 2  # eval_every stretched as the steps
    study = ms.summarise(res, "tiny", TINY, [])
    eq = study["equal_flops"]
    assert set(eq) == {"direct", "direct_matched"} and set(study["comparisons"]) == set(eq)
    # direct ends first: both read at direct's final count; matched ends after: at the compressed run's
    assert eq["direct"]["flops"] == [res["direct"][0]["train_flops"]]
    assert eq["direct_matched"]["flops"] == [res["compressed"][0]["train_flops"]]
    for s, diff in zip((0,), eq["direct_matched"]["diffs"]):
        loss_c = res["compressed"][s]["curve"][-1]["loss"]
        loss_m = sf.at_flops(res["direct_matched"][s]["curve"], res["compressed"][s]["train_flops"], "loss")
        assert diff == pytest.approx(100 * (math.exp(loss_c - loss_m) - 1), rel=1e-12)
    text = ms.markdown(study)
    assert "At equal training FLOPs" in text and "| direct_matched |" in text and "training FLOPs" in text
    ms.plot_curves(res, tmp_path / "study_flops.png", "tiny")
    assert (tmp_path / "study_flops.png").stat().st_size > 0


def test_matched_arms_need_the_compressed_runs_flops():
    with pytest.raises(ValueError, match="needs the compressed run's train_flops"):
        ms.arm_recipe(TINY, "direct_matched", 0, [3, 3])
    assert ms.default_arms(TINY) == ["compressed", "direct", "direct_matched", "uniform", "full"]
    balanced = {**TINY, "reduction": {**TINY["reduction"], "method": "balanced"}}
    assert "direct_same_arch_matched" in ms.default_arms(balanced)
