"""Mamba-3 reference and chunked CPU path: the reference against independent specifications
(Mamba-2's SSD where Mamba-3 reduces to it, a complex-valued diagonal recurrence for the rotated
pairs, MIMO as a sum of SISO scans), a split sequence against the whole, and the CPU path against
the reference in float64 on awkward shapes: outputs, final state and every gradient."""

import math

import pytest
import torch
from compressmamba.kernels.mamba3 import mamba3_scan_cpu, mamba3_scan_ref

from compressmamba.kernels import ssd_scan_ref

from mamba3_utils import TIME_KEYS, leaves, make_mamba3_inputs
from scan_utils import rel_err

FP64 = 1e-10


def test_reference_is_ssd_without_trapezoid_rotation_or_bias():
    """λ = 1 (Euler step), θ = 0, zero biases, A constant in time, R = 1: Mamba-2's SSD."""
    b, l, h, p, g, n = 2, 9, 4, 3, 2, 5
    inp = make_mamba3_inputs(b, l, h, p, g, n, s=2, seed=1)
    A = inp["A"][:, :1, :].expand(b, l, h)[0, 0]  # (h,) one rate per head
    inp.update(trap=torch.ones(b, l, h, dtype=torch.float64), theta=torch.zeros(b, l, 2, dtype=torch.float64))
    inp.update(B_bias=torch.zeros(h, 1, n, dtype=torch.float64), C_bias=torch.zeros(h, 1, n, dtype=torch.float64))
    inp["A"] = A.expand(b, l, h)
    y = mamba3_scan_ref(**inp)[:, :, 0]
    want = ssd_scan_ref(inp["x"], inp["delta"], A, inp["B"][:, :, 0], inp["C"][:, :, 0], D=inp["D"])
    assert rel_err(y, want) < FP64


def _complex_siso(inp):
    """SISO with G = 1 as a complex diagonal SSM: pair i is c = a + ib, turned by −Δφ each step,
    y = Re(conj(q) c) + (unrotated part); written independently of the reference's rotations."""
    x, dl, A, lam = inp["x"], inp["delta"], inp["A"], inp["trap"]
    Bt, Ct = inp["B"][:, :, 0, 0], inp["C"][:, :, 0, 0]  # (b, l, n)
    b, l, h, p = x.shape
    s = inp["theta"].shape[-1]
    kb, qb = Bt[:, :, None, :] + inp["B_bias"][:, 0], Ct[:, :, None, :] + inp["C_bias"][:, 0]  # (b, l, h, n)
    kc = torch.complex(kb[..., 0 : 2 * s : 2], kb[..., 1 : 2 * s : 2])
    qc = torch.complex(qb[..., 0 : 2 * s : 2], qb[..., 1 : 2 * s : 2])
    c = torch.zeros(b, h, p, s, dtype=torch.complex128)
    real = torch.zeros(b, h, p, kb.shape[-1] - 2 * s, dtype=torch.float64)
    prev_c = torch.zeros_like(c)
    prev_r = torch.zeros_like(real)
    ys = []
    for t in range(l):
        turn = torch.exp(-1j * math.pi * torch.tanh(inp["theta"][:, t])[:, None, :] * dl[:, t, :, None])  # (b, h, s)
        alpha = torch.exp(dl[:, t] * A[:, t])[..., None, None]
        beta = ((1 - lam[:, t]) * dl[:, t])[..., None, None] * alpha
        gamma = (lam[:, t] * dl[:, t])[..., None, None]
        uc = x[:, t, :, :, None] * kc[:, t, :, None, :]
        ur = x[:, t, :, :, None] * kb[:, t, :, None, 2 * s :]
        c = turn[:, :, None] * (alpha * c + beta * prev_c) + gamma * uc
        real = alpha * real + beta * prev_r + gamma * ur
        prev_c, prev_r = uc, ur
        y = (qc[:, t, :, None, :].conj() * c).real.sum(-1) + (real * qb[:, t, :, None, 2 * s :]).sum(-1)
        ys.append(y + inp["D"][:, None] * x[:, t])
    return torch.stack(ys, dim=1)


@pytest.mark.parametrize("n,s", [(10, 2), (8, 4), (7, 3)])
def test_reference_rotation_is_a_complex_diagonal_ssm(n, s):
    inp = make_mamba3_inputs(2, 13, 3, 4, 1, n, s=s, seed=2)
    assert rel_err(mamba3_scan_ref(**inp)[:, :, 0], _complex_siso(inp)) < FP64


def test_reference_mimo_is_a_sum_of_siso_scans():
    """y_r = Σ_r' SISO(x ⊙ mimo_x_r', B_r', C_r) + D x ⊙ mimo_x_r: the state is shared by the ranks."""
    b, l, h, p, g, n, s, R = 2, 11, 4, 3, 2, 6, 3, 3
    inp = make_mamba3_inputs(b, l, h, p, g, n, s, r=R, mimo=True, seed=3)
    y = mamba3_scan_ref(**inp)
    for r in range(R):
        want = inp["D"][:, None] * inp["x"] * inp["mimo_x"][:, r]
        for rp in range(R):
            one = dict(inp, x=inp["x"] * inp["mimo_x"][:, rp])
            one.update(B=inp["B"][:, :, rp : rp + 1], C=inp["C"][:, :, r : r + 1])
            one.update(B_bias=inp["B_bias"][:, rp : rp + 1], C_bias=inp["C_bias"][:, r : r + 1], D=None, mimo_x=None)
            want = want + mamba3_scan_ref(**one)[:, :, 0]
        assert rel_err(y[:, :, r], want) < FP64


@pytest.mark.parametrize("fn", [mamba3_scan_ref, mamba3_scan_cpu])
@pytest.mark.parametrize("mimo", [False, True])
def test_initial_state_continues_a_split_sequence(fn, mimo):
    inp = make_mamba3_inputs(2, 30, 4, 3, 2, 8, 2, r=2 if mimo else 1, mimo=mimo, seed=4)
    cut = 13
    y, final = fn(**inp, return_final_state=True)
    first = {k: (v[:, :cut] if k in TIME_KEYS else v) for k, v in inp.items()}
    rest = {k: (v[:, cut:] if k in TIME_KEYS else v) for k, v in inp.items()}
    y1, mid = fn(**first, return_final_state=True)
    y2, final2 = fn(**rest, initial_state=mid, return_final_state=True)
    assert rel_err(torch.cat([y1, y2], dim=1), y) < FP64
    for a, c in zip(final2, final):
        assert rel_err(a, c) < FP64


CASES = [  # b, l, h, p, g, n, s, r, chunk
    (2, 63, 4, 12, 2, 10, 2, 1, 16),
    (1, 17, 3, 5, 1, 7, 3, 1, 64),
    (2, 40, 4, 6, 1, 8, 4, 4, 8),
    (3, 9, 2, 3, 2, 5, 1, 2, 4),
    (1, 1, 2, 4, 1, 6, 1, 1, 16),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}_l{}_h{}_p{}_g{}_n{}_s{}_r{}_q{}".format(*c))
@pytest.mark.parametrize("with_state", [False, True])
def test_cpu_matches_reference_with_gradients(case, with_state):
    b, l, h, p, g, n, s, r, q = case
    kw = dict(r=r, mimo=r > 1, seed=5, with_state=with_state, grad=True)
    inp = make_mamba3_inputs(b, l, h, p, g, n, s, **kw)
    ref_inp = make_mamba3_inputs(b, l, h, p, g, n, s, **kw)
    y, st = mamba3_scan_cpu(**inp, return_final_state=True, chunk_size=q)
    y_ref, st_ref = mamba3_scan_ref(**ref_inp, return_final_state=True)
    assert rel_err(y, y_ref) < FP64
    for a, c in zip(st, st_ref):
        assert rel_err(a, c) < FP64
    gen = torch.Generator().manual_seed(9)
    w = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in (y, st[1], st[2], st[3])]

    def loss(out, state):
        # the angle state is taken mod 2π (piecewise constant jumps): its value is checked above
        return sum((a * c).sum() for a, c in zip((out, state[1], state[2], state[3]), w))

    grads = torch.autograd.grad(loss(y, st), leaves(inp))
    grads_ref = torch.autograd.grad(loss(y_ref, st_ref), leaves(ref_inp))
    for a, c in zip(grads, grads_ref):
        assert rel_err(a, c) < FP64


def test_cpu_float32_close_to_float64():
    inp = make_mamba3_inputs(2, 50, 4, 8, 2, 10, 2, seed=6)
    y64 = mamba3_scan_ref(**inp)
    y32 = mamba3_scan_cpu(**make_mamba3_inputs(2, 50, 4, 8, 2, 10, 2, seed=6, dtype=torch.float32), chunk_size=16)
    assert y32.dtype == torch.float32
    assert rel_err(y32, y64) < 1e-5


def test_cpu_rejects_bad_chunk_size():
    inp = make_mamba3_inputs(1, 4, 2, 2, 1, 4, 1, seed=7)
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        mamba3_scan_cpu(**inp, chunk_size=0)


def test_dispatch_runs_each_backend_and_checks_shapes():
    from compressmamba.kernels.mamba3 import mamba3_scan_fn

    inp = make_mamba3_inputs(1, 6, 2, 3, 1, 6, 2, r=2, mimo=True, seed=8)
    y = mamba3_scan_fn(**inp, backend="ref")
    assert rel_err(mamba3_scan_fn(**inp, backend="cpu", chunk_size=4), y) < FP64
    assert rel_err(mamba3_scan_fn(**inp), y) < FP64  # auto on CPU tensors: the chunked path
    with pytest.raises(ValueError, match=r"B_bias has shape \(2, 1, 6\), expected \(2, 2, 6\)"):
        mamba3_scan_fn(**dict(inp, B_bias=inp["B_bias"][:, :1]))
    with pytest.raises(
        ValueError, match=r"theta has shape \(1, 6, 4\), expected \(batch=1, length=6, S\) with 2S <= N=6"
    ):
        mamba3_scan_fn(**dict(inp, theta=torch.zeros(1, 6, 4, dtype=torch.float64)))
    with pytest.raises(ValueError, match="B has 2 ranks but mimo_x is None"):
        mamba3_scan_fn(**dict(inp, mimo_x=None))
    with pytest.raises(ValueError, match="backend must be one of"):
        mamba3_scan_fn(**inp, backend="cuda")
