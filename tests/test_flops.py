"""Training FLOPs (compressmamba/flops.py): hand counts on tiny configs, written out term by term,
and torch's FlopCounterMode on the matrix products it sees (forward and backward)."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from compressmamba import flops
from compressmamba.registry import build_model


def _by_name(terms):
    return {t.name: t for t in terms}


def test_mamba1_matches_a_hand_count_at_each_layers_own_n():
    # vocab 11, d_model 6, expand 2 (d = 12), dt_rank ceil(6/16) = 1, conv 4 taps with bias, no
    # projection bias, N = 3 and 5; b = 2, l = 5: T = 10 tokens
    model = build_model({"name": "mamba", "d_model": 6, "n_layers": 2, "state_size": [3, 5]}, vocab_size=11)
    mixer = model.backbone.layers[0].mixer
    assert mixer.in_proj.bias is None and mixer.conv1d.bias is not None
    T, d = 10, 12

    def layer(n):  # (forward, backward)
        return [
            (2 * T * 6 * 24, 4 * T * 6 * 24),  # in_proj 6 -> 24: 2880, 5760
            (2 * 4 * d * T, 4 * 4 * d * T),  # depthwise conv, 4 taps: 960, 1920
            (d * T, d * T),  # conv bias: 120, 120
            (2 * T * d * (1 + 2 * n), 4 * T * d * (1 + 2 * n)),  # x_proj 12 -> 1 + 2n
            (2 * T * 1 * d, 4 * T * 1 * d),  # dt_proj's product 1 -> 12: 240, 480
            (7 * T * d * n, 15 * T * d * n),  # the scan: 7 and 15 per (token, channel, state)
            (7 * T * d, 14 * T * d),  # per (token, channel): bias, softplus, Δu, D skip, gate
            (2 * T * d * 6, 4 * T * d * 6),  # out_proj 12 -> 6: 1440, 2880
        ]

    head = (2 * T * 6 * 11, 4 * T * 6 * 11)  # lm_head 6 -> 11 over every position
    hand = [*layer(3), *layer(5), head]
    fwd, bwd = sum(f for f, _ in hand), sum(b for _, b in hand)
    assert (fwd, bwd) == (6720 + 1320 * 3 + 6720 + 1320 * 5 + 1320, 13320 + 2760 * 3 + 13320 + 2760 * 5 + 2640)
    terms = flops.step_terms(model, 2, 5)
    assert sum(t.forward for t in terms) == fwd and sum(t.backward for t in terms) == bwd
    assert flops.train_step_flops(model, 2, 5) == fwd + bwd == 76680
    scan_fwd = 7 * T * d * (3 + 5) + 2 * 7 * T * d  # calibration runs each layer's recurrence again
    assert flops.calibration_flops(model, 2, 5) == fwd + scan_fwd


def test_mamba2_balanced_layer_matches_a_hand_count():
    # d_model 8, expand 2 (16 channels), head_dim 4 (H = 4 heads), G = 2 groups, N = 3 projected from
    # N_in = 5 (bc_proj), chunk 4; b = 2, l = 6: T = 12, two chunks of Q = 4 (the second padded)
    cfg = {"name": "mamba2", "d_model": 8, "n_layers": 1, "state_size": 3, "head_dim": 4, "n_groups": 2,
           "chunk_size": 4, "bc_proj_in": [5]}  # fmt: skip
    model = build_model(cfg, vocab_size=11)
    mixer = model.backbone.layers[0].mixer
    assert mixer.in_proj.bias is None and mixer.conv1d.bias is not None
    T, b, nc, Q, H, P, G, N = 12, 2, 2, 4, 4, 4, 2, 3
    conv = 16 + 2 * G * 5  # x and B, C at width 5: 36 channels
    fwd = {
        "in_proj": 2 * T * 8 * (16 + conv + H),  # 8 -> z, xBC, dt (56): 10752
        "conv1d": 2 * 4 * conv * T,  # 3456
        "conv1d.bias": conv * T,  # 432
        "bc_proj": 2 * (2 * T * G) * N * 5,  # B and C, (G, 3, 5) per token: 1440
        "ssd.CB": 2 * (b * nc * G * Q) * Q * N,  # 768
        "ssd.intra": 2 * (b * nc * H * Q) * P * Q,  # 2048
        "ssd.states": 2 * (b * nc * H * P) * N * Q,  # 1536
        "ssd.inter": 2 * (b * nc * H * Q) * P * N,  # 1536
        # decay matrices (difference, exp, product with C·Bᵀ), per (padded step, head) 5 and per
        # (step, head, channel) 6, state passing 2 per (chunk, head, channel, state)
        "ssd.decays": 3 * b * nc * H * Q * Q + b * nc * Q * H * (5 + 6 * P) + 2 * b * nc * H * P * N,
        "out_proj": 2 * T * 16 * 8,  # 3072
    }
    assert fwd["ssd.decays"] == 768 + 1856 + 384
    got = _by_name(flops.step_terms(model, 2, 6))
    for key, want in fwd.items():
        t = got[f"backbone.layers.0.mixer.{key}"]
        assert t.forward == want, key
        assert t.backward == (want if key.endswith("bias") else 2 * want), key
    assert got["lm_head"].forward == 2 * T * 8 * 11
    assert len(got) == len(fwd) + 1


def test_lru_matches_a_hand_count():
    # d_model 4, N = 3, float features of width 2 (no input gradient), 3 classes; b = 2, l = 8
    model = build_model({"name": "lru", "d_model": 4, "n_layers": 1, "state_size": 3, "n_classes": 3}, d_input=2)
    T, h, n, M = 16, 4, 3, 16  # FFT length M = 2l
    fft = 5 * M * 4  # 5 M log2 M
    scan = 2 * n * (2 * fft + 6 * M) + n * (fft + 2 * 8)
    hand = [
        (2 * T * 2 * h, 2 * T * 2 * h),  # encoder 2 -> 4, input needs no gradient
        (T * h, T * h),  # its bias
        (8 * T * n * h, 16 * T * n * h),  # B̃: a complex product, 4 real ones
        (scan, 2 * scan),
        (8 * T * n * h, 16 * T * n * h),  # C
        (2 * T * h, 4 * T * h),  # D skip
        (2 * T * h * 2 * h, 4 * T * h * 2 * h),  # GLU 4 -> 8
        (T * 2 * h, T * 2 * h),  # its bias
        (2 * 2 * h * 3, 4 * 2 * h * 3),  # head on one pooled row per sequence
        (2 * 3, 2 * 3),  # its bias
    ]
    terms = flops.step_terms(model, 2, 8)
    assert sum(t.forward for t in terms) == sum(f for f, _ in hand)
    assert sum(t.backward for t in terms) == sum(b for _, b in hand)


def _counted_matmuls(model, ids, ops=("aten.mm", "aten.bmm")):
    """FlopCounterMode's matrix products (``ops``) over one forward and backward."""
    with FlopCounterMode(display=False) as fc:
        model(input_ids=ids, labels=ids).loss.backward()
    return sum(c for op, c in fc.get_flop_counts()["Global"].items() if str(op) in ops)


@pytest.mark.parametrize(
    "cfg",
    [
        {"name": "mamba", "d_model": 6, "n_layers": 2, "state_size": [3, 5]},
        {"name": "mamba2", "d_model": 8, "n_layers": 2, "state_size": [3, 2], "head_dim": 4, "n_groups": 2,
         "chunk_size": 4, "bc_proj_in": [5, None]},
    ],
)  # fmt: skip
def test_matmuls_agree_with_torch_flop_counter(cfg):
    # Mamba-1's CPU scan is a custom autograd function whose batched products (bmm) are its own
    # forward and backward, counted here as scan work: compare the 2-D products (mm: projections,
    # dt, head). Mamba-2's SSD is autograd over matrix products (bmm) that are counted as such.
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=11)
    ids = torch.randint(0, 11, (2, 7))
    terms = flops.step_terms(model, 2, 7)
    mine = sum(t.total for t in terms if t.kind == "matmul")
    ops = ("aten.mm",) if cfg["name"] == "mamba" else ("aten.mm", "aten.bmm")
    assert mine > 0 and _counted_matmuls(model, ids, ops) == mine


@pytest.mark.parametrize(
    "family, extra",
    [("bamba", {}), ("granitemoehybrid", {"num_local_experts": 4, "num_experts_per_tok": 2})],
)
def test_hybrid_attention_mlp_moe_and_mixers_agree_with_torch_flop_counter(family, extra):
    from compressmamba.models import hybrid

    if why := hybrid.available(family):
        pytest.skip(why)
    sys.path.insert(0, str(Path(__file__).resolve().parent / "models"))
    from hybrid_configs import tiny_config

    # eager attention and experts: plain matrix products (FlopCounterMode does not see CPU SDPA
    # or transformers' grouped_mm experts); the experts see each token top-k times
    cfg = {**tiny_config(family), **extra, "attn_implementation": "eager", "experts_implementation": "eager"}
    model = hybrid.build_hybrid(config=cfg)
    ids = torch.randint(1, 50, (2, 10))
    terms = flops.step_terms(model, 2, 10)
    names = {t.name for t in terms}
    assert any(n.endswith("self_attn.scores") for n in names)
    if extra:
        experts = [t for t in terms if t.name.endswith(".experts")]
        assert len(experts) == 3 and any(n.endswith(".router") for n in names)
        per_expert = 2 * 48 * 32 + 32 * 48  # gate_up (2I, H) and down (H, I)
        assert experts[0].forward == 2 * (20 * 2) * per_expert  # 20 tokens, each through 2 of 4 experts
    assert _counted_matmuls(model, ids) == sum(t.total for t in terms if t.kind == "matmul")


def test_a_family_declares_its_count_and_subclasses_inherit_it():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(3, 5)

    class SubToy(Toy):
        pass

    net = nn.Sequential(Toy(), SubToy(), nn.Linear(5, 2, bias=False))
    # undeclared: the walk counts its Linear; declared: its own count replaces the walk's
    # two Linear(3, 5): product 2·8·3·5 = 240 forward, 480 backward, bias 40 and 40; Linear(5, 2): 160, 320
    assert flops.train_step_flops(net, 2, 4) == 2 * (240 + 480 + 40 + 40) + 160 + 320
    flops.register_flops(Toy)(lambda m, name, b, l: [flops.elementwise(f"{name}.toy", b * l)])
    try:
        got = _by_name(flops.step_terms(net, 2, 4))
        assert set(got) == {"0.toy", "1.toy", "2"} and got["1.toy"].forward == 8
    finally:
        flops.unregister_flops(Toy)


def test_bad_batch_shape_is_one_line():
    model = build_model({"name": "mamba", "d_model": 6, "n_layers": 1, "state_size": 3}, vocab_size=11)
    with pytest.raises(ValueError, match=r"batch 0 x length 5"):
        flops.train_step_flops(model, 0, 5)


def test_run_writes_cumulative_train_flops_with_its_calibration(tmp_path):
    from compressmamba.training import Trainer, recipe_from_dict
    from compressmamba.training.metrics import read_metrics

    recipe = {
        "name": "flops", "seed": 0, "out_dir": str(tmp_path / "run"),
        "model": {"name": "mamba", "d_model": 8, "n_layers": 2, "state_size": 6},
        "data": {"name": "text_lm", "corpus": "python_stdlib", "max_bytes": 30_000, "seq_len": 16},
        "optim": {"lr": 3e-3},
        "train": {"steps": 4, "batch_size": 2, "grad_accum": 2, "eval_every": 2, "eval_batches": 1, "log_every": 1,
                  "progress": False},
        "reduction": {"mode": "fixed", "fraction": 0.5, "attempts": [2], "calib_batches": 3, "plots": False},
    }  # fmt: skip
    tr = Trainer(recipe_from_dict(recipe))
    summary = tr.fit()
    assert tr.model.state_sizes == [3, 3]
    b, l = flops.batch_shape(tr.batches.batch(0, 0))
    big, small = (build_model({**recipe["model"], "state_size": n}, vocab_size=256) for n in (6, 3))
    step6, step3 = (2 * flops.train_step_flops(m, b, l) for m in (big, small))  # two micro-batches a step
    calib = 3 * flops.calibration_flops(big, b, l)  # three calibration batches at N = 6, before the cut
    rows = {
        r["step"]: r["train_flops"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"
    }
    assert rows == {1: step6, 2: 2 * step6, 3: 2 * step6 + calib + step3, 4: 2 * step6 + calib + 2 * step3}
    assert summary["train_flops"] == rows[4] and step3 < step6
    cut = next(r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "cut")
    assert cut["train_flops"] == 2 * step6 + calib
