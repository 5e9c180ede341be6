"""Random Mamba-3 scan inputs (never zeros) for the kernel tests."""

import torch
import torch.nn.functional as F

SCAN_KEYS = ("x", "delta", "A", "trap", "B", "C", "theta", "B_bias", "C_bias", "D", "mimo_x")
TIME_KEYS = ("x", "delta", "A", "trap", "B", "C", "theta")


def make_mamba3_inputs(b, l, h, p, g, n, s, r=1, mimo=False, dtype=torch.float64, seed=0, with_state=False, grad=False):
    """Inputs of ``mamba3_scan_*``: Δ = softplus(·) in a realistic range, A ≤ −1e-4, λ ∈ (0, 1),
    θ of either sign, biases and D away from zero; ``mimo`` adds mimo_x (H, R, P); with
    ``with_state`` a random initial state (angles, ssm, k, v)."""
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    inp = {
        "x": rnd(b, l, h, p),
        "delta": F.softplus(rnd(b, l, h) - 1.0),
        "A": -(F.softplus(rnd(b, l, h)) + 1e-4),
        "trap": torch.sigmoid(rnd(b, l, h)),
        "B": rnd(b, l, r, g, n),
        "C": rnd(b, l, r, g, n),
        "theta": 2 * rnd(b, l, s),
        "B_bias": 1 + 0.3 * rnd(h, r, n),
        "C_bias": 1 + 0.3 * rnd(h, r, n),
        "D": 1 + 0.5 * rnd(h),
        "mimo_x": (1 + 0.5 * rnd(h, r, p)) / r if mimo else None,
    }
    if with_state:
        inp["initial_state"] = (
            6 * torch.rand(b, h, s, generator=gen, dtype=torch.float64),
            rnd(b, h, p, n),
            rnd(b, r, h, n),
            rnd(b, h, p),
        )
    out = {}
    for k, v in inp.items():
        if isinstance(v, tuple):
            out[k] = tuple(t.to(dtype).requires_grad_(grad) for t in v)
        elif v is not None:
            out[k] = v.to(dtype).requires_grad_(grad)
        else:
            out[k] = None
    return out


def leaves(inp):
    """Every tensor of ``inp`` that takes a gradient, flattened, in a fixed order."""
    out = []
    for k in sorted(inp):
        v = inp[k]
        for t in v if isinstance(v, tuple) else (v,):
            if t is not None and t.requires_grad:
                out.append(t)
    return out
