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
from .mamba import MambaStats, checked_count

GRAMIAN_KEYS = ("ssd_in", "ssd_out", "ssd_decay")


class Mamba2Stats:
    """Running float64 sums for one Mamba-2 layer: Mamba-1's per-state sums (MambaStats over the
    H·p channels, grouped B and C) for the selection energies, and the group Gramian sums

      ssd_in (H, N, N) Σ_t Δ_t[h]² ‖x_t[h]‖² B_t[g(h)] B_t[g(h)]ᵀ,
      ssd_out (G, N, N) Σ_t C_t[g] C_t[g]ᵀ,   ssd_decay (H,) Σ_t exp(Δ_t[h] A[h]).
    """

    def __init__(self, heads: int, head_dim: int, groups: int, n: int):
        for name, v in (("heads", heads), ("head_dim", head_dim), ("groups", groups), ("n", n)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"Mamba2Stats: {name} must be a positive int, got {v!r}")
        if heads % groups:
            raise ValueError(f"Mamba2Stats: groups={groups} must divide heads={heads}")
        self.heads, self.head_dim, self.groups, self.n = heads, head_dim, groups, n
        self.modes = MambaStats(heads * head_dim, n)
        z = lambda *s: torch.zeros(*s, dtype=torch.float64)
        self.gram = {"ssd_in": z(heads, n, n), "ssd_out": z(groups, n, n), "ssd_decay": z(heads)}

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
        # Mamba-1's layout: channel (h, p) with step Δ[h] and decay A[h] for every state
        u = x.flatten(-2).transpose(1, 2).float()
        d = delta.float().repeat_interleave(p, dim=-1).transpose(1, 2)
        A_c = A.float().repeat_interleave(p)[:, None].expand(-1, n)
        self.modes.update(u=u, delta=d, A=A_c, B=B.permute(0, 2, 3, 1).float(), C=C.permute(0, 2, 3, 1).float())
        dev = x.device
        s = {k: v.to(dev) for k, v in self.gram.items()}
        w = delta.double() ** 2 * x.double().pow(2).sum(-1)  # (b, l, H)
        Bh = B.double().repeat_interleave(h // g, dim=2)  # (b, l, H, N): head h's group
        s["ssd_in"] += torch.einsum("blh,blhn,blhm->hnm", w, Bh, Bh)
        s["ssd_out"] += torch.einsum("blgn,blgm->gnm", C.double(), C.double())
        s["ssd_decay"] += torch.exp(delta.double() * A.double()).sum((0, 1))
        self.gram = s

    def as_dict(self) -> dict[str, Tensor]:
        """Every float64 sum on CPU, MambaStats' keys and GRAMIAN_KEYS (add dicts key by key)."""
        out = self.modes.as_dict()
        out.update({k: v.detach().cpu().clone() for k, v in self.gram.items()})
        return out


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
