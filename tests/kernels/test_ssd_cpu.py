"""SSD (Mamba-2) reference and chunked CPU path: the reference against Mamba-1's selective-scan
reference (an independent specification), initial states against a split sequence, the CPU
path against the reference on awkward shapes with every gradient, the decode step iterated
against the scan, and the input checks."""

import pytest
import torch

from compressmamba.kernels import (
    selective_scan_ref,
    ssd_scan_cpu,
    ssd_scan_fn,
    ssd_scan_ref,
    ssd_state_update,
)

from scan_utils import rel_err
from ssd_utils import make_ssd_inputs, run_ssd, ssd_reference

FP32_FWD, FP32_GRAD = 1e-5, 1e-4  # float32 inputs against float64
FP64 = 1e-11  # float64 against float64: only summation order differs
LOW_PREC = 2e-2  # bf16 inputs (rounded once, then the same inputs in float64)


def _detached(inp):
    return {k: v.detach() if v is not None else None for k, v in inp.items()}


@pytest.mark.parametrize("d_shape", ["head", "channel"])
def test_reference_equals_selective_scan_with_one_decay_per_head(d_shape):
    """SSD is the selective scan with A[c, n] = A[head(c)] for every state n and Δ shared by a
    head's p channels; B and C grouped the same way (channel c = head·p + i reads group c // (d/g))."""
    b, l, h, p, g, n = 2, 11, 6, 3, 3, 5
    inp = _detached(make_ssd_inputs(b, l, h, p, g, n, d_shape=d_shape, has_init=False, dtype=torch.float64, seed=1))
    kw = {k: v for k, v in inp.items() if k != "initial_states"}
    y, hT = ssd_scan_ref(**kw, dt_softplus=True, return_final_states=True)
    d = h * p
    mamba1 = selective_scan_ref(
        inp["x"].reshape(b, l, d).transpose(1, 2),
        inp["dt"].repeat_interleave(p, dim=2).transpose(1, 2),
        inp["A"].repeat_interleave(p)[:, None].expand(d, n),
        inp["B"].permute(0, 2, 3, 1),
        inp["C"].permute(0, 2, 3, 1),
        D=inp["D"].repeat_interleave(p) if d_shape == "head" else inp["D"].reshape(d),
        z=inp["z"].reshape(b, l, d).transpose(1, 2),
        delta_bias=inp["dt_bias"].repeat_interleave(p),
        delta_softplus=True,
        return_last_state=True,
    )
    assert rel_err(y, mamba1[0].transpose(1, 2).reshape(b, l, h, p)) < FP64
    assert rel_err(hT, mamba1[1].reshape(b, h, p, n)) < FP64


@pytest.mark.parametrize("fn", [ssd_scan_ref, ssd_scan_cpu])
def test_initial_states_continue_a_split_sequence(fn):
    inp = _detached(make_ssd_inputs(2, 30, 4, 3, 2, 7, has_init=False, dtype=torch.float64, seed=2))
    cut = 13
    first = {k: (v[:, :cut] if k in ("x", "dt", "B", "C", "z") else v) for k, v in inp.items()}
    rest = {k: (v[:, cut:] if k in ("x", "dt", "B", "C", "z") else v) for k, v in inp.items()}
    y, hT = fn(**inp, dt_softplus=True, return_final_states=True)
    y1, h1 = fn(**first, dt_softplus=True, return_final_states=True)
    y2, h2 = fn(**dict(rest, initial_states=h1), dt_softplus=True, return_final_states=True)
    assert rel_err(torch.cat([y1, y2], dim=1), y) < FP64 and rel_err(h2, hT) < FP64


# (l, chunk, h, g, p, n, flags): L not a multiple of the chunk, one chunk longer than L, chunk 1,
# several groups, every optional input on and off somewhere
CASES = [
    (63, 16, 6, 3, 8, 13, dict(d_shape="head", softplus=True, final=True)),
    (100, 32, 6, 2, 12, 13, dict(d_shape="channel", has_z=False, has_init=False, softplus=False, final=True)),
    (37, 64, 4, 1, 5, 47, dict(d_shape=None, has_bias=False, softplus=True, final=False)),
    (9, 1, 2, 2, 3, 4, dict(d_shape="head", has_init=False, softplus=True, final=True)),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("l,chunk,h,g,p,n,flags", CASES)
def test_cpu_matches_reference_with_every_gradient(l, chunk, h, g, p, n, flags, dtype):
    flags = dict(flags)
    softplus, final = flags.pop("softplus"), flags.pop("final")
    inp = make_ssd_inputs(2, l, h, p, g, n, **flags, softplus=softplus, dtype=dtype, seed=l + n)
    y, hT, grads = run_ssd(ssd_scan_cpu, inp, softplus, final, chunk_size=chunk)
    y64, h64, g64 = ssd_reference(inp, softplus, final)
    fwd, grad = (FP64, FP64) if dtype == torch.float64 else (FP32_FWD, FP32_GRAD)
    assert y.shape == y64.shape and y.dtype == dtype and rel_err(y, y64) < fwd
    if final:
        assert hT.shape == (2, h, p, n) and rel_err(hT, h64) < fwd
    assert set(grads) == set(g64)
    for k in g64:
        assert grads[k].shape == inp[k].shape and rel_err(grads[k], g64[k]) < grad, k


def test_cpu_bf16_accumulates_in_fp32():
    inp = make_ssd_inputs(1, 40, 4, 4, 2, 13, dtype=torch.bfloat16, seed=3)
    y, hT, g = run_ssd(lambda **kw: ssd_scan_fn(**kw, chunk_size=16, backend="cpu"), inp, True, True)
    y64, h64, g64 = ssd_reference(inp, True, True)
    assert y.dtype == torch.bfloat16 and hT.dtype == torch.float32
    assert rel_err(y, y64) < LOW_PREC and rel_err(hT, h64) < LOW_PREC
    for k in g64:
        assert g[k].dtype == torch.bfloat16 and rel_err(g[k], g64[k]) < LOW_PREC, k


@pytest.mark.parametrize("d_shape,g", [("head", 1), ("channel", 3)])
def test_decode_steps_equal_the_scan(d_shape, g):
    b, l, h, p, n = 2, 9, 6, 4, 13
    inp = _detached(make_ssd_inputs(b, l, h, p, g, n, d_shape=d_shape, seed=7))
    y_full, h_full = ssd_scan_fn(**inp, chunk_size=4, dt_softplus=True, return_final_states=True, backend="cpu")
    state = inp["initial_states"].clone()
    ys = []
    for t in range(l):
        step = {k: inp[k][:, t] for k in ("x", "dt", "B", "C", "z")}
        ys.append(ssd_state_update(state, **step, A=inp["A"], D=inp["D"], dt_bias=inp["dt_bias"], dt_softplus=True))
    assert rel_err(torch.stack(ys, dim=1), y_full) < FP32_FWD and rel_err(state, h_full) < FP32_FWD


def test_backends_by_name_agree():
    inp = _detached(make_ssd_inputs(1, 21, 4, 3, 2, 5, seed=4))
    ys = [ssd_scan_fn(**inp, chunk_size=8, dt_softplus=True, backend=be) for be in ("auto", "cpu", "ref")]
    assert rel_err(ys[0], ys[2]) < FP32_FWD and rel_err(ys[1], ys[2]) < FP32_FWD
    with pytest.raises(ValueError, match="backend must be one of"):
        ssd_scan_fn(**inp, backend="cuda")
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        ssd_scan_fn(**inp, chunk_size=0, backend="cpu")


def test_bad_input_is_refused_naming_the_argument():
    inp = _detached(make_ssd_inputs(2, 5, 6, 3, 2, 4, seed=0))
    bad = [
        ("x", inp["x"][0], r"x has shape \(5, 6, 3\), expected \(batch, seqlen >= 1, nheads, headdim\)"),
        ("dt", inp["dt"][:, :4], r"dt has shape \(2, 4, 6\), expected \(2, 5, 6\)"),
        ("A", torch.randn(6, 4), r"A has shape \(6, 4\), expected \(6,\): one scalar per head"),
        ("B", torch.randn(2, 5, 4, 4), r"B has shape \(2, 5, 4, 4\), expected \(2, 5, groups dividing 6, d_state\)"),
        ("C", torch.randn(2, 5, 2, 3), r"C has shape \(2, 5, 2, 3\), expected \(2, 5, 2, 4\) like B"),
        ("D", torch.randn(3), r"D has shape \(3,\), expected \(6,\) or \(6, 3\)"),
        ("z", inp["z"][..., :2], r"z has shape \(2, 5, 6, 2\), expected \(2, 5, 6, 3\) like x"),
        ("dt_bias", torch.randn(2), r"dt_bias has shape \(2,\), expected \(6,\)"),
        (
            "initial_states",
            torch.randn(2, 6, 3, 5),
            r"initial_states has shape \(2, 6, 3, 5\), expected \(2, 6, 3, 4\)",
        ),
        ("dt", inp["dt"].long(), r"dt has dtype torch.int64, expected a floating-point tensor"),
    ]
    for name, value, msg in bad:
        with pytest.raises(ValueError, match=msg):
            ssd_scan_fn(**dict(inp, **{name: value}))
    state = torch.zeros(2, 6, 3, 4)
    step = dict(x=inp["x"][:, 0], dt=inp["dt"][:, 0], A=inp["A"], B=inp["B"][:, 0], C=inp["C"][:, 0])
    with pytest.raises(ValueError, match=r"dt has shape \(2, 6, 3\), expected \(2, 6\)"):
        ssd_state_update(state, **dict(step, dt=inp["x"][:, 0]))
    with pytest.raises(ValueError, match=r"B has shape \(2, 2, 5\), expected \(2, groups, 4\)"):
        ssd_state_update(state, **dict(step, B=torch.randn(2, 2, 5)))
    with pytest.raises(ValueError, match=r"state has shape \(2, 6, 3\)"):
        ssd_state_update(state[..., 0], **step)
