"""Input-averaged Gramians of a Mamba-2 layer's groups and their balanced truncation
(docs/design.md, "Mamba-2: per-group selection and balanced truncation").

Symbols: b batch, l tokens, H heads of p channels, G groups of N states (head h reads group
g(h) = h·G/H), Δ (b, l, H) the step, A (H,) the scalar decay rate per head.

Every channel (h, p) of a group runs s_t = a_t s_{t−1} + b_t, y_t = C_tᵀ s_t with the *scalar*
a_t = exp(Δ_t[h] A[h]) and b_t = Δ_t[h] x_t[h, p] B_t[g] ∈ R^N. A scalar commutes with any
change of basis s = T ŝ, so B̂_t = T⁻¹ B_t, Ĉ_t = Tᵀ C_t give the same outputs for every head of
the group: the whole N-dimensional basis of a group is free, not just a choice of coordinates.

Input-averaged Gramians per group over calibration tokens (ā_h = E_t[exp(Δ_t[h] A[h])]):

  P_g = Σ_{h∈g} E_t[Δ_t[h]² ‖x_t[h]‖² B_t B_tᵀ] / (1 − ā_h²)       (N, N)
  Q_g = Σ_{h∈g} p · E_t[C_t C_tᵀ] / (1 − ā_h²)                   (N, N)

Why these: stack the group's channels (h, p) into one block-diagonal system. When Δ, B, C do not
vary with t (the LTI case, B_t = B̃ u_t with white u_t for several inputs), each summand is the
Gramian of one block, so P_g ⪰ every block's controllability Gramian and Q_g ⪰ every block's
observability Gramian: I ⊗ P_g and I ⊗ Q_g satisfy the blocks' Lyapunov inequalities, i.e. they
are generalised Gramians of the stacked system, and balanced truncation with the same T in every
block (the only kind a group can realise) keeps ‖G_hp − Ĝ_hp‖_∞ ≤ 2 Σ_{i>r} σ_i for every channel,
σ = sqrt(eig(P_g Q_g)) (tested in tests/reduction/test_ssd_balanced.py). With input-dependent
Δ, B, C the same sums are the paper's input-averaged surrogate (as `hankel` is for Mamba-1).

All statistics are float64 sums (``count`` tokens), so ranks add theirs before any division.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .lti import balancing_transform, zero_energy
from .mamba import checked_count

GRAMIAN_KEYS = ("ssd_in", "ssd_out", "ssd_decay")


class Mamba2Stats:
    """Running float64 sums for one Mamba-2 layer, computed in the structure of the SSD scan
    (per head and group, chunks of ``chunk`` steps, float32 work, float64 for float64 inputs): the selection
    energies' sums under MambaStats' keys and the group Gramian sums

      ssd_in (H, N, N) Σ_t Δ_t[h]² ‖x_t[h]‖² B_t[g(h)] B_t[g(h)]ᵀ,
      ssd_out (G, N, N) Σ_t C_t[g] C_t[g]ᵀ,   ssd_decay (H,) Σ_t exp(Δ_t[h] A[h]).

    ``out2`` is (H, N) here, Σ_t C_t[n]² Σ_p s_t[h, p, n]² per head: ``output`` sums it over the
    group's heads, so no channel's own state trajectory is needed. Within a chunk, with
    L[t, s] = exp(Σ_{s<r≤t} Δ_r A) (one scalar per head), α_t = L[t, −1], the carried-in state S
    (p, N) and ξ_s = Δ_s x_s:

      Σ_t C_t² Σ_p s_t² = ‖S‖² Σ_t C_t² α_t² + 2 Σ_s α_s B_s (ξ_s S) U_s + Σ_{s'} B_{s'} U_{s'} Σ_{s≤s'} c K L B_s,

    U_s = Σ_{t≥s} L[t, s]² C_t², K = ξ ξᵀ (T, T), c = 2 off the diagonal and 1 on it: matmuls
    of (T, T) by (T, N) per head, as in the scan itself. ``decay`` and ``dB`` are one value per
    head (per head and state) and come out expanded to MambaStats' (H·p, N).
    """

    def __init__(self, heads: int, head_dim: int, groups: int, n: int, chunk: int = 64):
        for name, v in (("heads", heads), ("head_dim", head_dim), ("groups", groups), ("n", n), ("chunk", chunk)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"Mamba2Stats: {name} must be a positive int, got {v!r}")
        if heads % groups:
            raise ValueError(f"Mamba2Stats: groups={groups} must divide heads={heads}")
        self.heads, self.head_dim, self.groups, self.n, self.chunk = heads, head_dim, groups, n, chunk
        z = lambda *s: torch.zeros(*s, dtype=torch.float64)
        h, p, g = heads, head_dim, groups
        self.sums = {
            "count": z(()),
            "in2": z(h * p, n),
            "dB": z(h, n),
            "c2": z(g, n),
            "c": z(g, n),
            "out2": z(h, n),
            "ssd_in": z(h, n, n),
            "ssd_out": z(g, n, n),
            "ssd_decay": z(h),
        }

    @torch.no_grad()
    def update(self, x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
        """Add one batch: x (b, l, H, p), delta (b, l, H) after softplus, A (H,) negative,
        B, C (b, l, G, N) after the conv, SiLU and any state projection."""
        h, p, g, n = self.heads, self.head_dim, self.groups, self.n
        b, l = x.shape[:2]
        want = {"x": (b, l, h, p), "delta": (b, l, h), "A": (h,), "B": (b, l, g, n), "C": (b, l, g, n)}
        for name, t in (("x", x), ("delta", delta), ("A", A), ("B", B), ("C", C)):
            if tuple(t.shape) != want[name]:
                raise ValueError(f"Mamba2Stats.update: {name} must be {want[name]}, got {tuple(t.shape)}")
        s = {k: v.to(x.device) for k, v in self.sums.items()}
        s["count"] += b * l
        s["ssd_decay"] += torch.exp(delta.double() * A.double()).sum((0, 1))
        wd, state = _work_dtype(x), None
        for t0 in range(0, l, self.chunk):
            sl = slice(t0, min(l, t0 + self.chunk))
            args = (t[:, sl].to(wd) for t in (x, delta, B, C))
            state = self._chunk(s, *args, A.to(wd), state)
        self.sums = s

    def _chunk(self, s, x, dt, B, C, A, S):
        """One chunk of T steps in the work dtype: x (b, T, H, p), dt (b, T, H), B, C (b, T, G, N);
        S the carried-in state (b, H, p, N) or None. Adds into ``s``; returns the chunk-end state."""
        r = self.heads // self.groups
        s["c2"] += (C**2).sum((0, 1)).double()
        s["c"] += C.sum((0, 1)).double()
        C64 = C.double()  # the Gramians in float64: balanced truncation reads their smallest eigenvalues
        s["ssd_out"] += torch.einsum("btgn,btgm->gnm", C64, C64)
        xi = (x * dt.unsqueeze(-1)).permute(0, 2, 1, 3)  # (b, H, T, p): ξ = Δ x
        Bh, Ch = (t.repeat_interleave(r, dim=2).permute(0, 2, 1, 3) for t in (B, C))  # (b, H, T, N)
        s["in2"] += torch.einsum("bhtp,bhtn->hpn", xi**2, Bh**2).flatten(0, 1).double()
        s["dB"] += torch.einsum("bth,bhtn->hn", dt, Bh).double()
        B64 = Bh.double()
        s["ssd_in"] += torch.einsum("bhtn,bhtm->hnm", B64 * xi.double().pow(2).sum(-1, keepdim=True), B64)
        L = torch.exp(_segsum((dt * A).transpose(1, 2)))  # (b, H, T, T), zero above the diagonal
        alpha = L[..., :, :1] * torch.exp(dt[:, :1] * A).permute(0, 2, 1).unsqueeze(-1)  # (b, H, T, 1)
        U = L.pow(2).transpose(-1, -2) @ Ch.pow(2)  # (b, H, T, N)
        K = (xi @ xi.transpose(-1, -2)) * L
        K = K + K.tril(-1)  # c = 2 below the diagonal
        out2 = (Bh * U * (K @ Bh)).sum(2)
        if S is not None:
            out2 += S.pow(2).sum(2) * (Ch.pow(2) * alpha.pow(2)).sum(2)
            out2 += 2 * (alpha * Bh * (xi @ S) * U).sum(2)
        s["out2"] += out2.sum(0).double()
        new = (xi * L[..., -1, :, None]).transpose(-1, -2) @ Bh  # (b, H, p, N)
        return new if S is None else new + alpha[..., -1:, :] * S

    def as_dict(self) -> dict[str, Tensor]:
        """Every float64 sum on CPU, MambaStats' keys and GRAMIAN_KEYS (add dicts key by key):
        ``decay`` (H·p, N) and ``dB`` (H·p, N) repeat each head's value over its channels."""
        out = {k: v.detach().cpu().clone() for k, v in self.sums.items()}
        p, n = self.head_dim, self.n
        out["decay"] = out["ssd_decay"].repeat_interleave(p)[:, None].expand(-1, n).clone()
        out["dB"] = out["dB"].repeat_interleave(p, dim=0)
        return out


def _work_dtype(t: Tensor) -> torch.dtype:
    """float32 work for float32, bfloat16 or float16 inputs; float64 inputs (the tests) stay float64."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _segsum(a: Tensor) -> Tensor:
    """a (..., T) → (..., T, T) with [t, s] = Σ_{s<r≤t} a_r for t ≥ s and −inf above the
    diagonal, summed directly (not as differences of a cumsum, which cancel in float32)."""
    T = a.shape[-1]
    below = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    seg = a.unsqueeze(-1).expand(*a.shape, T).masked_fill(~below, 0).cumsum(-2)
    return seg.masked_fill(~below.logical_or(torch.eye(T, dtype=torch.bool, device=a.device)), float("-inf"))


def group_gramians(stats: dict[str, Tensor], head_dim: int, layer: str = "?") -> tuple[Tensor, Tensor]:
    """(P, Q), each (G, N, N) float64: the input-averaged Gramians of the module docstring from
    summed ``Mamba2Stats`` statistics. Raises ValueError for missing keys, fewer than MIN_TOKENS
    tokens or NaN/inf sums."""
    count = checked_count(stats, ("count", *GRAMIAN_KEYS), layer, " (balanced needs Mamba2Stats' Gramian sums)")
    m = {k: stats[k].to(torch.float64) / count for k in GRAMIAN_KEYS}
    for k, v in m.items():
        if not torch.isfinite(v).all():
            raise ValueError(
                f"layer {layer}: calibration statistic '{k}' contains NaN or inf; the model has "
                "diverged (check the loss) — refusing to cut"
            )
    heads, groups = m["ssd_decay"].shape[0], m["ssd_out"].shape[0]
    if heads % groups:
        raise ValueError(f"layer {layer}: {groups} groups do not divide {heads} heads")
    denom = (1 - m["ssd_decay"] ** 2).clamp_min(1e-12)  # (H,)
    P = (m["ssd_in"] / denom[:, None, None]).unflatten(0, (groups, -1)).sum(1)
    Q = m["ssd_out"] * (head_dim / denom).unflatten(0, (groups, -1)).sum(1)[:, None, None]
    return P, Q


def balance_groups(P: Tensor, Q: Tensor, layer: str = "?", eps: float = 1e-12) -> tuple[Tensor, Tensor, Tensor]:
    """Square-root balancing of each group: sigma (G, N) descending, T and Tinv (G, N, N) with
    Tinv_g P_g Tinv_gᵀ ≈ T_gᵀ Q_g T_g ≈ diag(σ_g) and Tinv_g T_g = I (float64).

    A coordinate with zero Hankel energy (σ ≈ 0 to round-off: fewer reachable or observable
    directions than N) has no balanced form (its column of T would be huge): its column of T and
    row of Tinv are zero, so keeping it keeps a silent state, which drops nothing it carried."""
    out = [balancing_transform(p, q, eps) for p, q in zip(P.to(torch.float64), Q.to(torch.float64))]
    sigma, T, Tinv = (torch.stack(t) for t in zip(*out))
    if not torch.isfinite(sigma).all():
        raise ValueError(f"layer {layer}: Hankel singular values of the group Gramians are not finite")
    null = torch.stack([zero_energy(s) for s in sigma])  # (G, N)
    T, Tinv = T.masked_fill(null[:, None, :], 0.0), Tinv.masked_fill(null[:, :, None], 0.0)
    if not (torch.isfinite(T).all() and torch.isfinite(Tinv).all()):
        raise ValueError(f"layer {layer}: balancing the group Gramians gave non-finite values")
    return sigma, T, Tinv


def balanced_projections(
    sigma: Tensor, T: Tensor, Tinv: Tensor, keep: Tensor, layer: str = "?"
) -> tuple[Tensor, Tensor]:
    """The state projections that keep balanced coordinates ``keep`` ((G, r) indices into each
    group's σ) of :func:`balance_groups`: W_B = Tinv[keep] and W_C = T[:, keep]ᵀ, each (G, r, N),
    so the layer uses B̂_t = W_B B_t and Ĉ_t = W_C C_t (r = N with every coordinate: the same
    outputs). W_Cᵀ W_B is the oblique projector onto the kept balanced subspace."""
    g, n = sigma.shape
    keep = torch.as_tensor(keep, dtype=torch.long)
    if keep.dim() != 2 or keep.shape[0] != g or keep.numel() == 0 or keep.min() < 0 or keep.max() >= n:
        raise ValueError(f"layer {layer}: keep must be ({g}, r) indices in [0, {n}), got {keep.tolist()}")
    W_B = torch.stack([Tinv[i, keep[i]] for i in range(g)])
    W_C = torch.stack([T[i][:, keep[i]].T for i in range(g)])
    return W_B, W_C
