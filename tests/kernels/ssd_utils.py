"""Shared helpers for the SSD (Mamba-2) tests: random inputs, a forward+backward run, and the
float64 reference run."""

import torch

from compressmamba.kernels import ssd_scan_ref

NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")


def make_ssd_inputs(
    b,
    l,
    h,
    p,
    g,
    n,
    *,
    d_shape="head",
    has_z=True,
    has_bias=True,
    has_init=True,
    softplus=True,
    dtype=torch.float32,
    seed=0,
    device="cpu",
):
    """Fresh random inputs, requiring grad; ``d_shape`` is "head" (h,), "channel" (h, p) or None.
    dt and dt_bias are drawn of both signs for softplus, positive without it (a negative Δ would
    make the state grow exponentially)."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    inp = {
        "x": r(b, l, h, p),
        "dt": 0.5 * r(b, l, h) if softplus else 0.05 + 0.5 * torch.rand(b, l, h, generator=gen, dtype=torch.float64),
        "A": -torch.exp(0.5 * r(h)),
        "B": r(b, l, g, n),
        "C": r(b, l, g, n),
        "D": {"head": r(h), "channel": r(h, p), None: None}[d_shape],
        "z": r(b, l, h, p) if has_z else None,
        "dt_bias": (0.3 * r(h) if softplus else 0.1 * torch.rand(h, generator=gen, dtype=torch.float64))
        if has_bias
        else None,
        "initial_states": r(b, h, p, n) if has_init else None,
    }
    return {k: (v.to(device, dtype).requires_grad_() if v is not None else None) for k, v in inp.items()}


def run_ssd(fn, inp, softplus, final, **kw):
    """y, the final state (or None) and every input's gradient of a fixed random loss."""
    out = fn(**inp, dt_softplus=softplus, return_final_states=final, **kw)
    y, h = out if final else (out, None)
    gen = torch.Generator().manual_seed(5)
    gy = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.device, y.dtype)
    loss = (y * gy).sum()
    if h is not None:
        loss = loss + (h * torch.randn(h.shape, generator=gen, dtype=torch.float64).to(h.device, h.dtype)).sum()
    names = [k for k, v in inp.items() if v is not None]
    grads = torch.autograd.grad(loss, [inp[k] for k in names])
    return y, h, dict(zip(names, grads))


def ssd_reference(inp, softplus, final):
    """run_ssd on float64 CPU copies of the inputs through the step-by-step reference."""
    inp64 = {k: (v.detach().cpu().double().requires_grad_() if v is not None else None) for k, v in inp.items()}
    return run_ssd(ssd_scan_ref, inp64, softplus, final)
