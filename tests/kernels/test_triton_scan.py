import pytest
import torch
from compressmamba.kernels import selective_scan_fn
from compressmamba.kernels.selective_scan.scan import selective_scan_triton

from .scan_utils import make_inputs, reference, rel_err, run

# Small shapes: the interpreter is slow. Every N and L appears, every flag on and off.
CASES = [
    (1, 7, 4, dict(has_d=False, has_z=False, has_bias=False, softplus=False, last=False, groups=None)),
    (3, 64, 6, dict(has_d=True, has_z=False, has_bias=True, softplus=True, last=True, groups=None)),
    (13, 300, 3, dict(has_d=True, has_z=True, has_bias=True, softplus=True, last=True, groups=None)),
    (16, 1, 4, dict(has_d=False, has_z=True, has_bias=False, softplus=True, last=True, groups=2)),
    (47, 63, 6, dict(has_d=True, has_z=True, has_bias=False, softplus=False, last=False, groups=3)),
    (64, 7, 4, dict(has_d=True, has_z=True, has_bias=True, softplus=True, last=True, groups=None)),
]


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch):
    """Every buffer the launchers allocate starts as NaN: an element a kernel skips fails."""
    real = torch.empty

    def nan_empty(*args, **kw):
        t = real(*args, **kw)
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", nan_empty)


@pytest.mark.parametrize("n,l,d,flags", CASES)
def test_triton_scan_matches_float64_reference(n, l, d, flags):
    flags = dict(flags)
    softplus, last, groups = flags.pop("softplus"), flags.pop("last"), flags.pop("groups")
    inp = make_inputs(2, d, n, l, groups=groups, **flags, seed=n * 7 + l)
    y, h, grads = run(selective_scan_triton, inp, softplus, last, chunk=16)
    y64, h64, g64 = reference(inp, softplus, last)
    assert rel_err(y, y64) < 1e-5
    if last:
        assert rel_err(h, h64) < 1e-5
    for k in g64:
        assert rel_err(grads[k], g64[k]) < 1e-4, k


def test_triton_bf16_and_dispatch_by_name():
    inp = make_inputs(1, 4, 5, 20, dtype=torch.bfloat16, seed=9)
    y, _, g = run(lambda **kw: selective_scan_fn(**kw, backend="triton"), inp, True, False)
    y64, _, g64 = reference(inp, True, False)
    assert y.dtype == torch.bfloat16 and rel_err(y, y64) < 1e-2
    assert all(rel_err(g[k], g64[k]) < 2e-2 for k in g64)


def test_too_large_state_is_refused():
    inp = make_inputs(1, 2, 257, 3)
    with pytest.raises(ValueError, match="exceeds"):
        selective_scan_triton(**inp)
