"""Gramians, Hankel singular values and balanced truncation for diagonal LTI systems.

x_{k+1} = diag(lam) x_k + B u_k,  y_k = C x_k.  lam (n,) complex with |lam| < 1, B (n, p),
C (q, n). Everything is computed in complex128; numpy arrays are accepted.

The LRU's output is Re(C x). We balance and truncate the complex triple (lam, B, C) as the paper
does. This is sound for the real output too: the real system's transfer function is
(G(z) + conj(G(conj z))) / 2, so any H-infinity bound on G - G_r holds for the real parts.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import Tensor

_C = torch.complex128


def _as_tensor(x, name: str, layer: str | None) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    t = t.detach().to(_C)
    if not torch.isfinite(torch.view_as_real(t)).all():
        raise ValueError(f"{_where(layer)}{name} contains NaN or inf")
    return t


def _where(layer: str | None) -> str:
    return f"layer {layer}: " if layer else ""


def _check_system(lam, B, C, layer: str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    lam, B, C = (_as_tensor(x, n, layer) for x, n in ((lam, "lam"), (B, "B"), (C, "C")))
    if lam.dim() != 1:
        raise ValueError(f"{_where(layer)}lam must be 1-D (n,), got shape {tuple(lam.shape)}")
    n = lam.shape[0]
    if B.dim() != 2 or B.shape[0] != n:
        raise ValueError(f"{_where(layer)}B must have shape ({n}, p), got {tuple(B.shape)}")
    if C.dim() != 2 or C.shape[1] != n:
        raise ValueError(f"{_where(layer)}C must have shape (q, {n}), got {tuple(C.shape)}")
    r = lam.abs().max().item() if n else 0.0
    if r >= 1.0:
        raise ValueError(f"{_where(layer)}unstable system: max |lam| = {r:.6g}, expected < 1")
    return lam, B, C


def gramians_diagonal(lam, B, C, *, layer: str | None = None) -> tuple[Tensor, Tensor]:
    """Controllability and observability Gramians of (diag(lam), B, C) in closed form.

    P_ij = (B Bᴴ)_ij / (1 − lam_i conj(lam_j)),  Q_ij = (Cᴴ C)_ij / (1 − conj(lam_i) lam_j).
    Returns (P, Q), each (n, n) complex128 Hermitian positive semidefinite.
    """
    return diagonal_gramian_formula(*_check_system(lam, B, C, layer))


def diagonal_gramian_formula(lam: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """The closed form of :func:`gramians_diagonal` on complex tensors as they are: no checks, no
    detach, so it differentiates through (the Hankel-nuclear-norm regulariser)."""
    P = (B @ B.conj().T) / (1 - lam[:, None] * lam.conj()[None, :])
    Q = (C.conj().T @ C) / (1 - lam.conj()[:, None] * lam[None, :])
    return P, Q


def _psd_sqrt(M: Tensor) -> Tensor:
    """Square root of a Hermitian PSD matrix through its eigendecomposition."""
    M = (M + M.conj().T) / 2
    w, U = torch.linalg.eigh(M)
    return (U * w.clamp_min(0).sqrt().to(U.dtype)) @ U.conj().T


def balancing_transform(P: Tensor, Q: Tensor, eps: float = 1e-12) -> tuple[Tensor, Tensor, Tensor]:
    """(sigma, T, Tinv) by the square-root method: S = (P + eps·I)^½, S Q S = U Σ² Uᴴ,
    T = S U Σ^-½, so that Tinv P Tinvᴴ ≈ Tᴴ Q T = Σ and Tinv T = I.

    P, Q (n, n) Hermitian PSD, real float64 or complex128 (T, Tinv come back in P's dtype);
    sigma (n,) float64 descending. Tinv is formed without inverting S: U Σ^-2 Uᴴ S Q S = I gives
    Tinv = Σ^-3/2 Uᴴ S Q. Coordinates with σ ≈ 0 have huge columns of T: callers decide what a
    kept zero-energy coordinate becomes (see ``zero_energy``).
    """
    n = P.shape[0]
    S = _psd_sqrt(P + eps * torch.eye(n, dtype=P.dtype))
    M = S @ Q @ S
    w, U = torch.linalg.eigh((M + M.conj().T) / 2)
    w, U = w.flip(0), U.flip(1)  # descending
    sigma = w.clamp_min(0).sqrt()
    s = sigma.clamp_min(torch.finfo(torch.float64).tiny).to(P.dtype)
    T = (S @ U) * s.rsqrt()
    Tinv = (U.conj().T @ S @ Q) * s.pow(-1.5)[:, None]
    return sigma, T, Tinv


def _balance_chol(P: Tensor, Q: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(sigma, T, Tinv) by the Cholesky method: Loᴴ Lc = U S Vᴴ, T = Lc V S^-½."""
    n = P.shape[0]
    eye = torch.eye(n, dtype=P.dtype)
    Lc = torch.linalg.cholesky((P + P.conj().T) / 2 + eps * eye)
    Lo = torch.linalg.cholesky((Q + Q.conj().T) / 2 + eps * eye)
    U, sigma, Vh = torch.linalg.svd(Lo.conj().T @ Lc)
    s = sigma.clamp_min(torch.finfo(torch.float64).tiny).to(_C)
    T = (Lc @ Vh.conj().T) * s.rsqrt()
    Tinv = (U.conj().T @ Lo.conj().T) * s.rsqrt()[:, None]
    return sigma, T, Tinv


def hankel_singular_values(lam, B, C, *, layer: str | None = None) -> Tensor:
    """Hankel singular values σ = sort↓ sqrt(eig(P Q)) as float64 (n,).

    Computed as the eigenvalues of the Hermitian P^½ Q P^½, so they are real and ≥ 0.
    """
    P, Q = gramians_diagonal(lam, B, C, layer=layer)
    S = _psd_sqrt(P)
    M = S @ Q @ S
    w = torch.linalg.eigvalsh((M + M.conj().T) / 2).flip(0)
    sigma = w.clamp_min(0).sqrt()
    if not torch.isfinite(sigma).all():
        raise ValueError(f"{_where(layer)}Hankel singular values are not finite: {sigma}")
    return sigma


def rank_for_energy(sigma, tau: float, *, layer: str | None = None) -> int:
    """Smallest r with Σ_{i≤r} σ_i ≥ (1 − τ) Σ_i σ_i (plain σ, as the paper). σ sorted descending.

    Always at least 1. Raises on NaN/inf σ (a NaN must never turn into a cut).
    """
    if not (0.0 <= float(tau) < 1.0) or math.isnan(float(tau)):
        raise ValueError(f"{_where(layer)}tau must be in [0, 1), got {tau}")
    s = torch.as_tensor(np.asarray(sigma) if not isinstance(sigma, Tensor) else sigma)
    s = s.detach().to(torch.float64)
    if s.dim() != 1 or s.numel() == 0:
        raise ValueError(f"{_where(layer)}sigma must be a non-empty 1-D tensor, got {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError(f"{_where(layer)}energies contain NaN or inf: {s.tolist()}")
    if (s < 0).any():
        raise ValueError(f"{_where(layer)}energies must be >= 0, got min {s.min().item():.3g}")
    if (s[1:] > s[:-1]).any():
        raise ValueError(f"{_where(layer)}sigma must be sorted descending")
    total = s.sum()
    if total <= 0:
        return 1
    csum = torch.cumsum(s, 0)
    # tolerance for round-off so that tau = 0 keeps exactly the states with nonzero energy
    need = (1.0 - float(tau)) * total * (1 - 1e-12)
    r = int(torch.searchsorted(csum, need.unsqueeze(0)).item()) + 1
    return max(1, min(r, s.numel()))


def balanced_truncation(
    lam,
    B,
    C,
    rank: int | None = None,
    *,
    keep=None,
    method: str = "sqrtm",
    eps: float = 1e-12,
    layer: str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Balanced truncation of (diag(lam), B, C).

    Keeps the leading ``rank`` balanced coordinates, or exactly the balanced coordinates ``keep``
    (indices into σ sorted descending; used by the selection ablations). Returns
    (A_r (r, r), B_r (r, p), C_r (q, r)) complex128 with ‖G − G_r‖_∞ ≤ 2 Σ_{discarded} σ.

    A kept coordinate with zero Hankel energy (σ = 0 to round-off: an unobservable or
    uncontrollable direction, e.g. C = 0) has no balanced form; it is kept as a silent state
    (B and C rows zero, a pole of the original system), which contributes nothing to G, as the
    coordinate does not.
    """
    lam, B, C = _check_system(lam, B, C, layer)
    n = lam.shape[0]
    if keep is None:
        ok = isinstance(rank, numbers.Integral) and not isinstance(rank, bool) and 1 <= rank < n
        if not ok:
            raise ValueError(f"{_where(layer)}rank must be an integer in [1, {n - 1}], got {rank!r}")
        keep = torch.arange(int(rank))
    else:
        keep = torch.as_tensor(keep, dtype=torch.long)
        if keep.numel() < 1 or keep.min() < 0 or keep.max() >= n or keep.unique().numel() != keep.numel():
            raise ValueError(f"{_where(layer)}keep must hold distinct indices in [0, {n}), got {keep.tolist()}")
    P, Q = gramians_diagonal(lam, B, C)
    if method == "sqrtm":
        sigma, T, Tinv = balancing_transform(P, Q, eps)
    elif method == "chol":
        sigma, T, Tinv = _balance_chol(P, Q, max(eps, 1e-12))
    else:
        raise ValueError(f"method must be 'sqrtm' or 'chol', got {method!r}")
    if not torch.isfinite(sigma).all():
        raise ValueError(f"{_where(layer)}Hankel singular values are not finite")
    null = zero_energy(sigma)[keep]
    if not null.any():
        Tr, Tinv_r = T[:, keep], Tinv[keep, :]
        return (Tinv_r * lam[None, :]) @ Tr, Tinv_r @ B, C @ Tr
    return _with_silent_states(lam, B, C, P, Q, T, Tinv, keep, null)


def zero_energy(sigma: Tensor) -> Tensor:
    """Which σ are zero to round-off (bool (n,)): all of them when the system's Hankel energy is
    zero, else those below n·eps·σ_max, whose balancing transform would divide by ~0."""
    top = sigma.max() if sigma.numel() else sigma.new_zeros(())
    return sigma <= top * sigma.numel() * torch.finfo(torch.float64).eps


def _with_silent_states(lam, B, C, P, Q, T, Tinv, keep, null) -> tuple[Tensor, Tensor, Tensor]:
    """The reduced system for ``keep`` where the positions ``null`` have zero energy: balanced
    coordinates for the others, silent states (zero B row and C column) for those, with the
    poles of the original modes of least modal energy P_ii·Q_ii."""
    r, good = keep.numel(), keep[~null]
    pos_good, pos_null = (~null).nonzero().flatten(), null.nonzero().flatten()
    A_r = torch.zeros(r, r, dtype=_C)
    B_r = torch.zeros(r, B.shape[1], dtype=_C)
    C_r = torch.zeros(C.shape[0], r, dtype=_C)
    if good.numel():
        Tg, Tinv_g = T[:, good], Tinv[good, :]
        A_r[pos_good[:, None], pos_good[None, :]] = (Tinv_g * lam[None, :]) @ Tg
        B_r[pos_good] = Tinv_g @ B
        C_r[:, pos_good] = C @ Tg
    quiet = torch.argsort((P.diagonal() * Q.diagonal()).real.abs())[: pos_null.numel()]
    A_r[pos_null, pos_null] = lam[quiet]
    return A_r, B_r, C_r


def transfer_function(A, B, C, z) -> Tensor:
    """G(z) = C (zI − A)⁻¹ B for each z (m,) → (m, q, p). A may be (n,) diagonal or (n, n)."""
    A, B, C = (torch.as_tensor(x).to(_C) for x in (A, B, C))
    z = torch.as_tensor(z).to(_C)
    if A.dim() == 1:
        return torch.einsum("qn,mn,np->mqp", C, 1.0 / (z[:, None] - A[None, :]), B)
    n = A.shape[0]
    eye = torch.eye(n, dtype=_C)
    X = torch.linalg.solve(z[:, None, None] * eye - A, B.expand(z.shape[0], -1, -1))
    return C @ X


def lti_to_lru(A_r, B_r, C_r, *, layer: str | None = None, min_decay: float = 1e-7) -> dict[str, Tensor]:
    """Map a dense reduced system back to LRU parameters by eigendecomposing A_r.

    A_r = V diag(λ) V⁻¹, B' = V⁻¹ B_r, C' = C_r V; ν_log = log(−log|λ|), θ_log = log(arg λ mod 2π),
    γ = sqrt(1 − |λ|²), (B_re, B_im) = B'/γ, (C_re, C_im) = C'. Guards: |λ| is capped at
    1 − min_decay (so ν_log stays finite) and arg λ = 0 is lifted to 1e-8 (so θ_log is finite).
    Returns float64 tensors nu_log, theta_log, gamma_log (r,), B_re, B_im (r, p), C_re, C_im (q, r).
    """
    A_r, B_r, C_r = (torch.as_tensor(x).to(_C) for x in (A_r, B_r, C_r))
    lam, V = torch.linalg.eig(A_r)
    B_new = torch.linalg.solve(V, B_r)
    C_new = C_r @ V
    mag = lam.abs().clamp(max=1 - min_decay, min=1e-30)
    if lam.abs().max() >= 1:
        raise ValueError(f"{_where(layer)}reduced system is unstable: max |λ| = {lam.abs().max().item():.6g}")
    theta = torch.remainder(torch.angle(lam), 2 * math.pi).clamp_min(1e-8)
    nu_log = torch.log(-torch.log(mag))
    gamma = torch.sqrt(1 - mag**2)
    Bg = B_new / gamma[:, None].to(_C)
    out = {
        "nu_log": nu_log,
        "theta_log": torch.log(theta),
        "gamma_log": torch.log(gamma),
        "B_re": Bg.real.contiguous(),
        "B_im": Bg.imag.contiguous(),
        "C_re": C_new.real.contiguous(),
        "C_im": C_new.imag.contiguous(),
    }
    for k, v in out.items():
        if not torch.isfinite(v).all():
            raise ValueError(f"{_where(layer)}mapping back to LRU parameters gave non-finite {k}")
    return out


def lru_eigenvalues(nu_log: Tensor, theta_log: Tensor) -> Tensor:
    """The LRU's diagonal λ = exp(−exp(ν_log) + i·exp(θ_log)) (|λ| < 1 for any parameters)."""
    return torch.exp(torch.complex(-torch.exp(nu_log), torch.exp(theta_log)))


def lru_to_lti(
    nu_log, theta_log, gamma_log, B_re, B_im, C_re, C_im, *, detach: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """LRU parameters → (lam (n,), B̃ = (B_re + iB_im)·γ (n, p), C (q, n)) in complex128;
    ``detach=False`` keeps the graph (a regulariser differentiates through it)."""
    f = lambda t: (torch.as_tensor(t).detach() if detach else t).to(torch.float64)
    nu_log, theta_log, gamma_log = f(nu_log), f(theta_log), f(gamma_log)
    lam = lru_eigenvalues(nu_log, theta_log)
    B = torch.complex(f(B_re), f(B_im)) * torch.exp(gamma_log)[:, None]
    C = torch.complex(f(C_re), f(C_im))
    return lam, B, C
