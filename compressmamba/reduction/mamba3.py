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
norm over N is not kept).
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
    coordinates): slice in_proj's B, C and angle rows, B_bias, C_bias and the norm weights, and
    return their state maps. Keeping every mode changes nothing."""
    n, s = mixer.state_size, mixer.n_angles
    keep = _check_keep(keep, n - s, mixer.layer_idx)
    if keep.numel() == n - s:
        return {}
    from ..models.mamba3 import bc_rows

    coords, s_new = mode_coordinates(keep, s)
    di, h, rgn = mixer.d_inner, mixer.n_heads, mixer.rank * mixer.n_groups * n
    tail = 2 * di + 2 * rgn
    rows = torch.cat(
        [torch.arange(2 * di), bc_rows(mixer, coords), torch.arange(tail, tail + 3 * h), tail + 3 * h + keep[keep < s]]
    )
    maps = {"in_proj.weight": _rows(rows), "B_bias": _rows(coords, 2), "C_bias": _rows(coords, 2)}
    maps.update({"B_norm.weight": _rows(coords), "C_norm.weight": _rows(coords)})
    if mixer.in_proj.bias is not None:
        maps["in_proj.bias"] = _rows(rows)
    for name, fn in maps.items():
        mod, _, attr = name.rpartition(".")
        module = mixer.get_submodule(mod) if mod else mixer
        setattr(module, attr, torch.nn.Parameter(fn(getattr(module, attr)).clone()))
    mixer.in_proj.out_features = mixer.in_proj.weight.shape[0]
    mixer._set_shape(int(coords.numel()), s_new)
    return maps
