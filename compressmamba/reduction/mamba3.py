"""Energies and cuts of a Mamba-3 layer's modes (docs/design.md, "Mamba-3: cutting whole modes").

A head's state has S turned pairs and F = N − 2S unturned coordinates. A turned pair (2i, 2i + 1)
is one complex state c = a + ib whose transition is α e^{−iΔφ}: its two real coordinates mix at
every step, so a pair is one *mode* and is kept or cut whole. An unturned coordinate is a mode of
its own (the decay α is a scalar per head, so coordinates do not mix). Modes are indexed
[0, S) for the pairs, then [S, S + F) for the unturned coordinates; a mode is shared by every
head, rank and group (the angles θ are shared by all heads), so one keep list serves the layer.

Sums over calibration tokens (float64, so ranks add theirs; ``count`` tokens):

  out_pair (H, S), out_free (H, F)   Σ_t Σ_{r,p} (Σ_{n∈mode} q_t,r[n] h_t[p, n])²
                                     the mode's part of y_t,r, exact for removing one mode
  in (H, N)     Σ_t Δ_t² Σ_p (Σ_r v_t,r[p] k_t,r[n])²,   out (H, N)   Σ_t Σ_r q_t,r[n]²
  decay (H,)    Σ_t α_t

Energies per mode (summed over heads): ``output`` E[out]; ``hankel`` the input-averaged diagonal
Gramians P = E[in] / (1 − ā²), Q = P_dim · E[out] / (1 − ā²), both summed over the mode's
coordinates (a rotation keeps the sum of a pair's squares), e = Σ_h sqrt(P Q).

What a cut keeps exactly: the kept modes' B and C rows of in_proj, their bias and norm-weight
entries, and the kept pairs' angle rows are sliced (with their Adam moments), so every kept
mode's turned k, q and its trapezoidal terms are as before, except for one thing: the B/C
RMSNorms normalise over the N' kept coordinates instead of N. The cut layer is therefore the
uncut layer with the dropped modes' B, C zeroed after the norm and the norm's mean square taken
over the kept coordinates (tests/reduction/test_mamba3_cut.py proves both that and that the
norm over N is not kept). ``balanced`` (:func:`balanced_modes`, :func:`truncate_layer_`) balances
each group's unturned coordinates and projects onto the kept ones (docs/design.md, "Mamba-3").
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..kernels.mamba3.cpu import rotated_keys
from ..kernels.mamba3.reference import compute_dtype, rank_values
from .mamba import checked_count

MAMBA3_METHODS = ("output", "hankel")


class Mamba3Stats:
    """Running float64 sums for one Mamba-3 layer of H heads, N states, S turned pairs."""

    def __init__(self, heads: int, n: int, s: int, chunk: int = 64):
        if not (isinstance(heads, int) and isinstance(n, int) and isinstance(s, int)) or heads < 1 or n < 1:
            raise ValueError(f"Mamba3Stats: heads and n must be positive ints, got {heads!r}, {n!r}")
        if not 0 <= 2 * s <= n:
            raise ValueError(f"Mamba3Stats: s must satisfy 0 <= 2s <= n={n}, got {s!r}")
        self.heads, self.n, self.s, self.chunk = heads, n, s, chunk
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float64)
        f = n - 2 * s
        self.sums = {
            "count": z(()),
            "out_pair": z(heads, s),
            "out_free": z(heads, f),
            "in": z(heads, n),
            "out": z(heads, n),
            "decay": z(heads),
            "bal_in": z(heads, f, f),
            "bal_out": z(heads, f, f),
        }

    @torch.no_grad()
    def update(self, args: dict) -> None:
        """Add one batch: ``args`` are the scan's inputs (kernels/mamba3) from zero state."""
        ct = compute_dtype(args["x"])  # float32, float64 for a float64 model
        x, dl = args["x"].to(ct), args["delta"].to(ct)
        b, l, h, p = x.shape
        if h != self.heads or args["B"].shape[-1] != self.n or args["theta"].shape[-1] != self.s:
            raise ValueError(
                f"Mamba3Stats.update: inputs have {h} heads, N={args['B'].shape[-1]}, S={args['theta'].shape[-1]}; "
                f"expected {self.heads}, {self.n}, {self.s}"
            )
        zero = torch.zeros(b, h, self.s, dtype=ct, device=x.device)
        _, k, q = rotated_keys(args["B"], args["C"], args["theta"], dl, args["B_bias"], args["C_bias"], zero, h, ct)
        v = rank_values(x, None if args["mimo_x"] is None else args["mimo_x"].to(ct))  # (b, l, R, H, P)
        lam = args["trap"].to(ct)
        alpha = torch.exp(dl * args["A"].to(ct))
        u = torch.einsum("blrhp,blrhn->blhpn", v, k)
        s = {key: t.to(x.device) for key, t in self.sums.items()}
        s["count"] += b * l
        s["decay"] += alpha.double().sum((0, 1))
        s["in"] += (dl[..., None, None] ** 2 * u**2).double().sum((0, 1, 3))
        s["out"] += (q.double() ** 2).sum((0, 1, 2))
        uf, qf = u[..., 2 * self.s :].double(), q[..., 2 * self.s :].double()
        s["bal_in"] += torch.einsum("blh,blhpf,blhpg->hfg", dl.double() ** 2, uf, uf)
        s["bal_out"] += torch.einsum("blrhf,blrhg->hfg", qf, qf)
        state = torch.zeros(b, h, p, self.n, dtype=ct, device=x.device)
        prev = torch.zeros_like(state)
        for t in range(l):
            beta, gamma = (1 - lam[:, t]) * dl[:, t] * alpha[:, t], lam[:, t] * dl[:, t]
            state = alpha[:, t, :, None, None] * state + beta[..., None, None] * prev + gamma[..., None, None] * u[:, t]
            prev = u[:, t]
            parts = q[:, t, :, :, None, :] * state[:, None]  # (b, R, H, P, N)
            pairs = parts[..., : 2 * self.s].unflatten(-1, (self.s, 2)).sum(-1)
            s["out_pair"] += (pairs.double() ** 2).sum((0, 1, 3))
            s["out_free"] += (parts[..., 2 * self.s :].double() ** 2).sum((0, 1, 3))
        self.sums = s

    def as_dict(self) -> dict[str, Tensor]:
        return {k: v.cpu() for k, v in self.sums.items()}


def _per_mode(t: Tensor, s: int) -> Tensor:
    """(H, N) per coordinate → (H, S + F) per mode (a pair's two coordinates summed)."""
    return torch.cat([t[:, : 2 * s].unflatten(-1, (s, 2)).sum(-1), t[:, 2 * s :]], dim=-1)


def mode_energy(stats: dict, method: str, s: int, n: int, layer: str = "?") -> Tensor:
    """One float64 energy per mode (S + F,), summed over heads; see the module docstring."""
    if method not in MAMBA3_METHODS:
        raise ValueError(f"layer {layer}: Mamba-3 energy method must be one of {MAMBA3_METHODS}, got {method!r}")
    count = checked_count(stats, ("out_pair", "out_free", "in", "out", "decay"), layer)
    if stats["in"].shape[-1] != n or stats["out_pair"].shape[-1] != s:
        found = (stats["in"].shape[-1], stats["out_pair"].shape[-1])
        raise ValueError(f"layer {layer}: statistics are for (N, S) = {found}; the layer has N={n}, S={s}")
    if method == "output":
        e = torch.cat([stats["out_pair"], stats["out_free"]], dim=-1).double() / count
    else:
        a = (stats["decay"].double() / count).clamp(max=1 - 1e-6)[:, None]
        P = _per_mode(stats["in"].double() / count, s) / (1 - a**2)
        Q = _per_mode(stats["out"].double() / count, s) / (1 - a**2)
        e = torch.sqrt(P * Q)
    e = e.sum(0)
    if not torch.isfinite(e).all():
        raise ValueError(f"layer {layer}: Mamba-3 energies are not finite: {e.tolist()}")
    return e


def balanced_modes(stats: dict, s: int, n: int, groups: int, layer: str = "?") -> tuple[Tensor, tuple]:
    """``balanced``: energies (S + F,) and the balancing (σ, T, T⁻¹) of each group's unturned part.

    Per group g (heads h ∈ g, ā_h = E[α]) over the F unturned coordinates:
    P_g = Σ_h E[Δ² Σ_p b b ᵀ] / (1 − ā_h²) with b = Σ_r v_r[p] k_r, Q_g = Σ_h E[Σ_r q_r q_rᵀ] / (1 − ā_h²);
    σ_g = sqrt(eig(P_g Q_g)) by square-root balancing, and unturned mode i is every group's i-th
    balanced coordinate, energy Σ_g σ_g[i]. A turned pair gets the same quantity on its two
    coordinates' diagonal (a rotation keeps it), Σ_g sqrt(P_g Q_g)."""
    from .ssd import balance_groups

    count = checked_count(stats, ("bal_in", "bal_out", "in", "out", "decay"), layer, " (balanced needs them)")
    if stats["bal_in"].shape[-1] != n - 2 * s:
        raise ValueError(
            f"layer {layer}: statistics are for {stats['bal_in'].shape[-1]} unturned states, not {n - 2 * s}"
        )
    m = {k: stats[k].double() / count for k in ("bal_in", "bal_out", "in", "out", "decay")}
    if not all(torch.isfinite(v).all() for v in m.values()):
        raise ValueError(f"layer {layer}: calibration statistics contain NaN or inf; refusing to cut")
    w = 1 / (1 - m["decay"].clamp(max=1 - 1e-6) ** 2)  # (H,)
    per_group = lambda t: (t * w.view(-1, *[1] * (t.dim() - 1))).unflatten(0, (groups, -1)).sum(1)  # noqa: E731
    P, Q = per_group(m["bal_in"]), per_group(m["bal_out"])
    sigma, T, Tinv = balance_groups(P, Q, layer=layer)
    Pp = per_group(_per_mode(m["in"], s)[:, :s])
    Qp = per_group(_per_mode(m["out"], s)[:, :s])
    energy = torch.cat([torch.sqrt(Pp * Qp).sum(0), sigma.sum(0)])
    return energy, (sigma, T, Tinv)


def mode_coordinates(keep: Tensor, s: int) -> tuple[Tensor, int]:
    """Kept modes (sorted) → the kept coordinates in our layout (kept pairs side by side, then the
    kept unturned coordinates) and the new S."""
    pairs, free = keep[keep < s], keep[keep >= s] - s
    coords = torch.cat([torch.stack([2 * pairs, 2 * pairs + 1], -1).flatten(), 2 * s + free])
    return coords, int(pairs.numel())


def _check_keep(keep, modes: int, layer: int) -> Tensor:
    keep = torch.as_tensor(keep, dtype=torch.long).cpu()
    if keep.dim() == 2 and keep.shape[0] == 1:
        keep = keep[0]
    ok = keep.dim() == 1 and keep.numel() >= 1 and keep.unique().numel() == keep.numel()
    if not ok or keep.min() < 0 or keep.max() >= modes:
        raise ValueError(f"layer {layer}: keep must be distinct mode indices in [0, {modes}), got {keep.tolist()}")
    return torch.sort(keep).values


def _rows(idx: Tensor, dim: int = 0):
    """State map: an optimizer moment of the old tensor → its entries ``idx`` along ``dim``."""
    return lambda t: t.index_select(dim, idx.to(t.device))


@torch.no_grad()
def truncate_layer_(mixer, keep) -> dict:
    """Keep modes ``keep`` of a Mamba3Mixer (indices into its energy: S pairs, then F unturned
    modes) and return the state maps. The kept pairs' B, C rows of in_proj, norm weights, biases and
    angle rows are sliced. Unturned modes: by selection, their rows (or, on a layer with a state
    projection, the rows of ``bc_proj``); after ``energy(stats, "balanced")`` a projection onto the
    kept balanced coordinates (composed with any earlier one; in_proj and the norms keep every
    unturned input coordinate, the biases turn with the basis, their moments and bc_proj's are
    dropped). Keeping every mode changes nothing."""
    from ..models.mamba2 import BCProjection
    from ..models.mamba3 import bc_rows

    n, s = mixer.state_size, mixer.n_angles
    basis, mixer._balancing = mixer._balancing, None
    keep = _check_keep(keep, n - s, mixer.layer_idx)
    if keep.numel() == n - s:
        return {}
    pairs, free = keep[keep < s], keep[keep >= s] - s
    coords, s_new = mode_coordinates(keep, s)  # kept state coordinates (selection)
    turned = coords[: 2 * s_new]
    projected = basis is not None or mixer.bc_proj is not None
    f_in = mixer.bc_width - 2 * s
    inputs = torch.cat([turned, 2 * s + torch.arange(f_in)]) if projected else coords  # kept B/C input coordinates
    di, h, rgn = mixer.d_inner, mixer.n_heads, mixer.rank * mixer.n_groups * mixer.bc_width
    tail = 2 * di + 2 * rgn
    rows = torch.cat(
        [torch.arange(2 * di), bc_rows(mixer, inputs), torch.arange(tail, tail + 3 * h), tail + 3 * h + pairs]
    )
    maps = {"in_proj.weight": _rows(rows), "B_norm.weight": _rows(inputs), "C_norm.weight": _rows(inputs)}
    if mixer.in_proj.bias is not None:
        maps["in_proj.bias"] = _rows(rows)
    if basis is None:
        maps.update({"B_bias": _rows(coords, 2), "C_bias": _rows(coords, 2)})
        if mixer.bc_proj is not None:
            maps.update({"bc_proj.B": _rows(free, 1), "bc_proj.C": _rows(free, 1)})
    _apply(mixer, maps)
    if basis is not None:
        maps.update(_project_unturned_(mixer, basis, free, turned, 2 * s, BCProjection))
    mixer.bc_width = int(inputs.numel())
    mixer._set_shape(2 * s_new + int(free.numel()), s_new)
    return maps


def _apply(mixer, maps: dict) -> None:
    for name, fn in maps.items():
        mod, _, attr = name.rpartition(".")
        module = mixer.get_submodule(mod) if mod else mixer
        setattr(module, attr, torch.nn.Parameter(fn(getattr(module, attr)).clone()))
    mixer.in_proj.out_features = mixer.in_proj.weight.shape[0]


def _project_unturned_(mixer, basis, free: Tensor, turned: Tensor, s2: int, projection_cls) -> dict:
    """A balanced cut of the unturned part: W_B = T⁻¹[keep], W_C = T[:, keep]ᵀ per group (composed
    with an existing bc_proj), biases B̂ = W_B b, Ĉ = W_C c per head (its group's W). Returns None
    state maps: a new basis."""
    from .ssd import balanced_projections

    g = mixer.n_groups
    W_B, W_C = balanced_projections(*basis, free.expand(g, -1), layer=str(mixer.layer_idx))
    per_head = lambda W: W.repeat_interleave(mixer.n_heads // g, dim=0)  # noqa: E731
    for name, W in (("B_bias", W_B), ("C_bias", W_C)):
        old = getattr(mixer, name)
        moved = torch.einsum("hij,hrj->hri", per_head(W).to(old), old[..., s2:])
        setattr(mixer, name, torch.nn.Parameter(torch.cat([old[..., turned], moved], -1)))
    if mixer.bc_proj is not None:
        W_B, W_C = W_B @ mixer.bc_proj.B.double(), W_C @ mixer.bc_proj.C.double()
    ref = mixer.in_proj.weight
    proj = projection_cls(g, W_B.shape[1], W_B.shape[2]).to(device=ref.device, dtype=ref.dtype)
    proj.B.copy_(W_B)
    proj.C.copy_(W_C)
    mixer.bc_proj = proj
    return {"B_bias": None, "C_bias": None, "bc_proj.B": None, "bc_proj.C": None}
