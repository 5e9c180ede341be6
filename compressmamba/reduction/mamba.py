"""Input-averaged Hankel energy of a Mamba-1 layer's states
(docs/design.md, "Mamba-1: input-averaged per-state energy").

Every state n is its own mode in every channel d: A is diagonal and B_t, C_t are shared by all
channels, so removing state n changes the output by exactly Σ_d C_t[n] h_t[d, n]. Over
calibration tokens t we accumulate float64 *sums* (so ranks can add theirs), never per-token
tensors:

  count, Σ exp(Δ A) (d, n), Σ (Δ u B)² (d, n), Σ C² (n,), Σ Δ B (d, n), Σ C (n,),
  Σ (C h)² (d, n) measured from the scan (h recomputed chunk by chunk of the sequence, in float32,
  the sums in float64; never a (b, d, n, l) tensor: Σ (Δ u B)² and Σ Δ B are matmuls over the tokens).

Energies per state n (float64 (n,)), with ā = E[exp(Δ A)]:
  hankel      : P = E[(Δ u B)²] / (1 − ā²), Q = E[C²] / (1 − ā²), e_n = Σ_d sqrt(P Q)
  hankel_mean : P = E[Δ B]² / (1 − ā²),     Q = E[C]² / (1 − ā²),  e_n = Σ_d sqrt(P Q)
  output      : e_n = Σ_d E[(C_t[n] h_t[d, n])²], exact for removing one mode.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..kernels.selective_scan.cpu import scan_forward

ENERGY_METHODS = ("hankel", "hankel_mean", "output")
MIN_TOKENS = 16
_KEYS = ("count", "decay", "in2", "c2", "dB", "c", "out2")


class MambaStats:
    """Running float64 sums for one layer of d channels and n states.

    Streamed over the sequence: each update runs chunks of at most ``chunk`` steps (fewer when
    b·T·d·n would pass ``max_elems``), so its working memory is a few (b, T, d, n) float32 tensors
    (float64 for float64 inputs, as in the tests), as the layer's own scan; the sums are float64.
    The reduction/reference.py path it replaced gives the same sums (tests/reduction).
    """

    def __init__(self, d: int, n: int, chunk: int = 64, max_elems: int = 1 << 22):
        for name, v in (("d", d), ("n", n), ("chunk", chunk), ("max_elems", max_elems)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"MambaStats: {name} must be a positive int, got {v!r}")
        self.d, self.n, self.chunk, self.max_elems = d, n, chunk, max_elems
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

    def _check(self, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> int:
        """Validate shapes against (d, n); returns the number of groups g (1 for (b, n, l) B, C)."""
        if u.dim() != 3 or u.shape[1] != self.d or u.shape[2] < 1:
            raise ValueError(f"u must be (b, d={self.d}, l>=1), got {tuple(u.shape)}")
        b, d, l = u.shape
        if delta.shape != u.shape:
            raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
        if A.shape != (self.d, self.n):
            raise ValueError(f"A must be (d, n) = ({self.d}, {self.n}), got {tuple(A.shape)}")
        g = B.shape[1] if B.dim() == 4 else 1
        want = (b, self.n, l) if B.dim() == 3 else (b, g, self.n, l)
        for name, t in (("B", B), ("C", C)):
            if tuple(t.shape) != want:
                raise ValueError(f"{name} must be (b, n, l) or (b, g, n, l) = {want}, got {tuple(t.shape)}")
        if d % g:
            raise ValueError(f"B, C groups g={g} must divide the channels d={d}")
        return g

    @torch.no_grad()
    def update(self, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
        """Add one batch. u, delta (b, d, l) with delta the step Δ after bias and softplus;
        A (d, n) negative real; B, C (b, n, l) or grouped (b, g, n, l) (channel d uses group
        d // (d / g)). Grouped C makes the C sums (g, n) instead of (n,)."""
        g = self._check(u, delta, A, B, C)
        b, d, l = u.shape
        s = {k: v.to(u.device) for k, v in self.sums.items()}
        if B.dim() == 4 and s["c"].dim() == 1:
            if s["count"] > 0:
                raise ValueError("B, C: grouped (b, g, n, l) after ungrouped batches in the same stats")
            s["c"], s["c2"] = s["c"].new_zeros(g, self.n), s["c2"].new_zeros(g, self.n)
        s["count"] += b * l
        s["c2"] += (C.double() ** 2).sum((0, -1))
        s["c"] += C.double().sum((0, -1))
        wd = torch.float64 if u.dtype == torch.float64 else torch.float32
        Bg, Cg = ((t if t.dim() == 4 else t[:, None]).to(wd) for t in (B, C))  # (b, g, n, l)
        h0 = None
        steps = max(1, min(self.chunk, self.max_elems // (b * d * self.n)))
        for t0 in range(0, l, steps):
            sl = slice(t0, min(l, t0 + steps))
            h0 = self._chunk(s, u[..., sl].to(wd), delta[..., sl].to(wd), A.to(wd), Bg[..., sl], Cg[..., sl], h0)
        self.sums = s

    def _chunk(self, s, u, dt, A, B, C, h0):
        """One chunk of T steps: u, dt (b, d, T), B, C (b, g, n, T) in the work dtype; adds into
        the float64 sums ``s`` and returns the state (b, T, d, n)[:, -1] carried to the next."""
        b, d, T = u.shape
        g = B.shape[1]
        du = (dt * u).unflatten(1, (g, d // g))  # (b, g, d/g, T)
        s["in2"] += torch.einsum("bgct,bgnt->gcn", du**2, B**2).flatten(0, 1).double()
        s["dB"] += torch.einsum("bgct,bgnt->gcn", dt.unflatten(1, (g, d // g)), B).flatten(0, 1).double()
        a = torch.exp(dt.transpose(1, 2).unsqueeze(-1) * A)  # (b, T, d, n)
        s["decay"] += a.sum((0, 1)).double()
        Bt, Ct = (t.permute(0, 3, 1, 2).unsqueeze(3) for t in (B, C))  # (b, T, g, 1, n)
        x = (du.permute(0, 3, 1, 2).unsqueeze(-1) * Bt).flatten(2, 3)  # (b, T, d, n)
        h = scan_forward(a, x, h0)
        s["out2"] += (h.unflatten(2, (g, d // g)) * Ct).pow(2).sum((0, 1)).flatten(0, 1).double()
        return h[:, -1]

    def as_dict(self) -> dict[str, Tensor]:
        """The float64 sums on CPU (add dicts key by key to combine ranks or batches)."""
        return {k: v.detach().cpu().clone() for k, v in self.sums.items()}

    @classmethod
    def from_dict(cls, sums: dict[str, Tensor]) -> MambaStats:
        missing = [k for k in _KEYS if k not in sums]
        if missing:
            raise ValueError(f"sums lack {missing}; expected the keys {_KEYS}")
        d, n = sums["decay"].shape
        obj = cls(d, n)
        obj.sums = {k: sums[k].to(torch.float64).clone() for k in _KEYS}
        return obj


def checked_count(stats: dict[str, Tensor], keys, layer: str, why: str = "") -> float:
    """The token count of summed statistics that hold every key of ``keys`` and at least
    MIN_TOKENS tokens (ValueError naming the layer otherwise; ``why`` says who needs the keys)."""
    missing = [k for k in keys if k not in stats]
    if missing:
        raise ValueError(f"layer {layer}: statistics lack {missing}{why}")
    count = float(stats["count"])
    if count < MIN_TOKENS:
        raise ValueError(
            f"layer {layer}: calibration saw {count:.0f} tokens, need at least {MIN_TOKENS}; "
            "raise reduction.calib_batches or the batch size"
        )
    return count


def _means(stats: dict[str, Tensor], layer: str):
    count = checked_count(stats, _KEYS, layer)
    m = {k: stats[k].to(torch.float64) / count for k in _KEYS if k != "count"}
    d = m["decay"].shape[0]
    for k in ("c2", "c"):  # (n,) shared by all channels, or (g, n) per group of d / g channels
        v = m[k]
        if v.dim() == 2 and d % v.shape[0]:
            raise ValueError(f"layer {layer}: statistic '{k}' has {v.shape[0]} groups, which do not divide d={d}")
        m[k] = v[None, :].expand(d, -1) if v.dim() == 1 else v.repeat_interleave(d // v.shape[0], dim=0)
    for k, v in m.items():
        if not torch.isfinite(v).all():
            raise ValueError(
                f"layer {layer}: calibration statistic '{k}' contains NaN or inf; the model has "
                "diverged (check the loss) — refusing to cut"
            )
    return m


def mamba_energy(
    stats: dict[str, Tensor], method: str = "hankel", layer: str = "?", groups: int | None = None
) -> Tensor:
    """Per-state energy (n,) float64 by ``method`` in ENERGY_METHODS (see module docstring),
    summed over all d channels; with ``groups`` = G, (G, n): state n of group g summed over that
    group's d / G channels (Mamba-2, where each group's states are modes of their own).

    ``stats`` is ``MambaStats.as_dict()`` (or a sum of several); ``layer`` names the layer in
    errors. Raises ValueError for an unknown method, fewer than MIN_TOKENS calibration tokens,
    or NaN/inf statistics."""
    if method not in ENERGY_METHODS:
        hint = {
            "random": " (random and smallest are selection modes: reduction.selection)",
            "smallest": " (random and smallest are selection modes: reduction.selection)",
            "balanced": (
                " (balanced truncation needs a scalar decay shared by all states of a group, as in "
                "Mamba-2; a Mamba-1 layer's A[d, n] differs per state, so only selection applies)"
            ),
        }.get(method, "")
        raise ValueError(f"energy method must be one of {ENERGY_METHODS}, got {method!r}{hint}")
    m = _means(stats, layer)
    if method == "output":
        per_channel = m["out2"]
    else:
        denom = (1 - m["decay"] ** 2).clamp_min(1e-12)
        if method == "hankel":
            P, Q = m["in2"] / denom, m["c2"] / denom
        else:
            P, Q = m["dB"] ** 2 / denom, m["c"] ** 2 / denom
        per_channel = torch.sqrt(P * Q)
    if groups is None:
        return per_channel.sum(0)
    d, n = per_channel.shape
    if groups < 1 or d % groups:
        raise ValueError(f"layer {layer}: groups={groups} must be >= 1 and divide the channels d={d}")
    return per_channel.reshape(groups, d // groups, n).sum(1)
