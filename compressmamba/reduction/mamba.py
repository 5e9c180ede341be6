"""Input-averaged Hankel energy of a Mamba-1 layer's states (DESIGN.md "Mamba-1").

Every state n is its own mode in every channel d: A is diagonal and B_t, C_t are shared by all
channels, so removing state n changes the output by exactly Σ_d C_t[n] h_t[d, n]. Over
calibration tokens t we accumulate float64 *sums* (so ranks can add theirs), never per-token
tensors:

  count, Σ exp(Δ A) (d, n), Σ (Δ u B)² (d, n), Σ C² (n,), Σ Δ B (d, n), Σ C (n,),
  Σ (C h)² (d, n) measured from the scan (h recomputed chunk by chunk).

Energies per state n (float64 (n,)), with ā = E[exp(Δ A)]:
  hankel      : P = E[(Δ u B)²] / (1 − ā²), Q = E[C²] / (1 − ā²), e_n = Σ_d sqrt(P Q)
  hankel_mean : P = E[Δ B]² / (1 − ā²),     Q = E[C]² / (1 − ā²),  e_n = Σ_d sqrt(P Q)
  output      : e_n = Σ_d E[(C_t[n] h_t[d, n])²], exact for removing one mode.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..kernels.selective_scan.cpu import _scan_forward

ENERGY_METHODS = ("hankel", "hankel_mean", "output")
MIN_TOKENS = 16
_KEYS = ("count", "decay", "in2", "c2", "dB", "c", "out2")


class MambaStats:
    """Running float64 sums for one layer of d channels and n states."""

    def __init__(self, d: int, n: int, chunk: int = 256):
        self.d, self.n, self.chunk = d, n, chunk
        z = lambda *s: torch.zeros(*s, dtype=torch.float64)
        self.sums = {
            "count": z(()),
            "decay": z(d, n),
            "in2": z(d, n),
            "c2": z(n),
            "dB": z(d, n),
            "c": z(n),
            "out2": z(d, n),
        }

    @torch.no_grad()
    def update(self, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
        """u, delta (b, d, l) with delta the step Δ after bias and softplus; A (d, n); B, C (b, n, l)."""
        b, d, l = u.shape
        if (d, B.shape[1]) != (self.d, self.n) or A.shape != (self.d, self.n):
            raise ValueError(
                f"stats for (d={self.d}, n={self.n}) got u {tuple(u.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}"
            )
        dev = u.device
        s = {k: v.to(dev) for k, v in self.sums.items()}
        du = delta * u
        s["count"] += b * l
        s["in2"] += torch.einsum("bdl,bnl->dn", du.double() ** 2, B.double() ** 2)
        s["c2"] += (C.double() ** 2).sum((0, 2))
        s["dB"] += torch.einsum("bdl,bnl->dn", delta.double(), B.double())
        s["c"] += C.double().sum((0, 2))
        h0 = torch.zeros(b, d, self.n, dtype=torch.float32, device=dev)
        At = A.float()
        for t0 in range(0, l, self.chunk):
            sl = slice(t0, min(l, t0 + self.chunk))
            dt = delta[..., sl].float().transpose(1, 2)  # (b, T, d)
            a = torch.exp(dt.unsqueeze(-1) * At)  # (b, T, d, n)
            s["decay"] += a.double().sum((0, 1))
            x = du[..., sl].float().transpose(1, 2).unsqueeze(-1) * B[..., sl].float().transpose(1, 2).unsqueeze(2)
            h = _scan_forward(a, x) + torch.cumprod(a, dim=1) * h0[:, None]
            s["out2"] += ((h * C[..., sl].float().transpose(1, 2).unsqueeze(2)) ** 2).double().sum((0, 1))
            h0 = h[:, -1]
        self.sums = s

    def as_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.sums.items()}

    @classmethod
    def from_dict(cls, sums: dict[str, Tensor]) -> MambaStats:
        d, n = sums["decay"].shape
        obj = cls(d, n)
        obj.sums = {k: sums[k].to(torch.float64).clone() for k in _KEYS}
        return obj


def _means(stats: dict[str, Tensor], layer: str):
    missing = [k for k in _KEYS if k not in stats]
    if missing:
        raise ValueError(f"layer {layer}: statistics lack {missing}")
    count = float(stats["count"])
    if count < MIN_TOKENS:
        raise ValueError(
            f"layer {layer}: calibration saw {count:.0f} tokens, need at least {MIN_TOKENS}; "
            "raise reduction.calib_batches or the batch size"
        )
    m = {k: stats[k].to(torch.float64) / count for k in _KEYS if k != "count"}
    for k, v in m.items():
        if not torch.isfinite(v).all():
            raise ValueError(
                f"layer {layer}: calibration statistic '{k}' contains NaN or inf; the model has "
                "diverged (check the loss) — refusing to cut"
            )
    return m


def mamba_energy(stats: dict[str, Tensor], method: str = "hankel", layer: str = "?") -> Tensor:
    """Per-state energy (n,) float64 by ``method`` in ENERGY_METHODS (see module docstring)."""
    if method not in ENERGY_METHODS:
        hint = (
            " (random and smallest are selection modes: reduction.selection)"
            if method in ("random", "smallest")
            else ""
        )
        raise ValueError(f"energy method must be one of {ENERGY_METHODS}, got {method!r}{hint}")
    m = _means(stats, layer)
    if method == "output":
        return m["out2"].sum(0)
    denom = (1 - m["decay"] ** 2).clamp_min(1e-12)
    if method == "hankel":
        P, Q = m["in2"] / denom, m["c2"][None, :] / denom
    else:
        P, Q = m["dB"] ** 2 / denom, m["c"][None, :] ** 2 / denom
    return torch.sqrt(P * Q).sum(0)


def per_channel_hsv(stats: dict[str, Tensor], layer: str = "?") -> Tensor:
    """Diagnostic: for each channel d, the Hankel singular values (n,) of its mean system
    (diag(ā[d]), b̄[d], c̄) — the paper's per-channel surrogate. Returns (d, n), descending."""
    m = _means(stats, layer)
    a, bb, c = m["decay"], m["dB"], m["c"]  # (d, n), (d, n), (n,)
    denom = 1 - a[:, :, None] * a[:, None, :]
    P = bb[:, :, None] * bb[:, None, :] / denom
    Q = (c[:, None] * c[None, :])[None] / denom
    ev = torch.linalg.eigvals(P @ Q).real.clamp_min(0).sqrt()
    return torch.sort(ev, dim=-1, descending=True).values
