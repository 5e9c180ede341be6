"""Shared helpers for selective-scan tests: random inputs, relative error, a reference run."""

import os

import torch

from compressmamba.kernels import selective_scan_ref

# Where the tests run the Triton kernels: natively on a GPU when there is one and the interpreter
# is off (`TRITON_INTERPRET=0 pytest tests/kernels`), else on CPU tensors under the interpreter.
TRITON_DEVICE = "cuda" if os.environ.get("TRITON_INTERPRET") != "1" and torch.cuda.is_available() else "cpu"


def rel_err(a, b):
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), "NaN/inf in result"
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_inputs(
    b, d, n, l, *, groups=None, has_d=True, has_z=True, has_bias=True, dtype=torch.float32, seed=0, device="cpu"
):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    bc = (b, groups, n, l) if groups else (b, n, l)
    inp = {
        "u": r(b, d, l),
        "delta": 0.5 * r(b, d, l),
        "A": -torch.exp(0.5 * r(d, n)),
        "B": r(*bc),
        "C": r(*bc),
        "D": r(d) if has_d else None,
        "z": r(b, d, l) if has_z else None,
        "delta_bias": 0.3 * r(d) if has_bias else None,
    }
    return {k: (v.to(device, dtype).requires_grad_() if v is not None else None) for k, v in inp.items()}


def run(fn, inp, softplus, last, **kw):
    out = fn(**inp, delta_softplus=softplus, return_last_state=last, **kw)
    y, h = out if last else (out, None)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(y.device, y.dtype)
    loss = (y * gy).sum() + (h.sum() if h is not None else 0)
    names = [k for k, v in inp.items() if v is not None]
    grads = torch.autograd.grad(loss, [inp[k] for k in names])
    return y, h, dict(zip(names, grads))


def reference(inp, softplus, last):
    inp64 = {k: (v.detach().double().requires_grad_() if v is not None else None) for k, v in inp.items()}
    return run(selective_scan_ref, inp64, softplus, last)
