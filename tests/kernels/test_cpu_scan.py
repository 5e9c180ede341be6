import pytest
import torch
from compressmamba.kernels.selective_scan.cpu import linear_scan, scan_forward, scan_reverse

from compressmamba.kernels import (
    selective_scan_cpu,
    selective_scan_fn,
    selective_scan_ref,
)

from scan_utils import make_inputs, reference, rel_err, run

# (n, l, flags): every N and every L appear, every flag on and off
CASES = [
    (1, 7, dict(has_d=False, has_z=False, has_bias=False, softplus=False, last=False, groups=None)),
    (3, 64, dict(has_d=True, has_z=False, has_bias=True, softplus=True, last=True, groups=None)),
    (13, 300, dict(has_d=True, has_z=True, has_bias=True, softplus=True, last=True, groups=None)),
    (16, 1, dict(has_d=False, has_z=True, has_bias=False, softplus=True, last=True, groups=2)),
    (47, 63, dict(has_d=True, has_z=True, has_bias=False, softplus=False, last=False, groups=3)),
    (64, 7, dict(has_d=True, has_z=True, has_bias=True, softplus=True, last=True, groups=None)),
]


@pytest.mark.parametrize("n,l,flags", CASES)
def test_cpu_scan_matches_float64_reference(n, l, flags):
    flags = dict(flags)
    softplus, last, groups = flags.pop("softplus"), flags.pop("last"), flags.pop("groups")
    inp = make_inputs(2, 6, n, l, groups=groups, **flags, seed=n + l)
    y, h, grads = run(selective_scan_cpu, inp, softplus, last)
    y64, h64, g64 = reference(inp, softplus, last)
    assert rel_err(y, y64) < 1e-5
    if last:
        assert h.shape == (2, 6, n) and rel_err(h, h64) < 1e-5
    for k in g64:
        assert rel_err(grads[k], g64[k]) < 1e-4, k


def test_cpu_scan_float64_is_exact_and_bf16_close():
    inp = make_inputs(1, 4, 5, 33, dtype=torch.float64, seed=1)
    y, _, g = run(selective_scan_cpu, inp, True, False)
    y64, _, g64 = reference(inp, True, False)
    assert rel_err(y, y64) < 1e-12 and all(rel_err(g[k], g64[k]) < 1e-11 for k in g)
    inp16 = make_inputs(1, 4, 5, 33, dtype=torch.bfloat16, seed=1)
    y16, _, _ = run(selective_scan_cpu, inp16, True, False)
    assert y16.dtype == torch.bfloat16 and rel_err(y16, y64) < 1e-2


def test_long_sequence_strong_decay_is_stable():
    inp = make_inputs(1, 3, 4, 2000, seed=2)
    with torch.no_grad():
        inp["delta"].mul_(20)  # Δ·|A| up to ~100: decays underflow, nothing may overflow
    y, h, g = run(selective_scan_cpu, inp, True, True)
    y64, h64, g64 = reference(inp, True, True)
    assert rel_err(y, y64) < 1e-5 and rel_err(h, h64) < 1e-5
    assert all(rel_err(g[k], g64[k]) < 1e-4 for k in g)


def test_linear_scan_gradcheck():
    a = torch.rand(2, 3, 11, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, 11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(linear_scan, (a, x))


def test_noncontiguous_inputs_and_dispatch():
    inp = make_inputs(2, 6, 5, 9, seed=4)
    inp = {k: v.detach() if v is not None else None for k, v in inp.items()}
    u_nc = inp["u"].transpose(1, 2).contiguous().transpose(1, 2)
    y_ref = selective_scan_ref(**{**inp, "u": u_nc})
    for backend in ("auto", "cpu", "ref"):
        assert rel_err(selective_scan_fn(**{**inp, "u": u_nc}, backend=backend), y_ref) < 1e-5


def test_bad_inputs_name_argument_and_shapes():
    inp = make_inputs(2, 6, 5, 9)
    with pytest.raises(ValueError, match=r"B has shape \(2, 4, 9\), expected \(2, 5, 9\)"):
        selective_scan_fn(**{**inp, "B": torch.randn(2, 4, 9)})
    with pytest.raises(ValueError, match=r"D has shape"):
        selective_scan_fn(**{**inp, "D": torch.randn(5)})
    with pytest.raises(ValueError, match="backend"):
        selective_scan_fn(**inp, backend="cuda")
    with pytest.raises(ValueError, match="delta"):
        selective_scan_fn(**{**inp, "delta": torch.randn(2, 6, 8)})


@pytest.mark.parametrize("L", [1, 2, 7, 16, 17, 50, 65])
def test_blocked_scans_match_a_loop_in_both_directions(L):
    """The blocked forward and reverse scans (padding, several chunks, chunk carries) against a
    plain float64 loop: h_t = a_t h_{t-1} + x_t and G_t = g_t + a_{t+1} G_{t+1}."""
    g = torch.Generator().manual_seed(L)
    a = torch.rand(2, L, 3, 4, generator=g, dtype=torch.float64)
    x = torch.randn(2, L, 3, 4, generator=g, dtype=torch.float64)
    h0 = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    h, want_h = h0, []
    for t in range(L):
        h = a[:, t] * h + x[:, t]
        want_h.append(h)
    G, want_G = torch.zeros_like(h0), [None] * L
    for t in reversed(range(L)):
        G = x[:, t] + (a[:, t + 1] * G if t + 1 < L else 0)
        want_G[t] = G
    torch.testing.assert_close(scan_forward(a, x, h0), torch.stack(want_h, 1))
    torch.testing.assert_close(scan_reverse(a, x), torch.stack(want_G, 1))
