"""Readable PyTorch specification of the Mamba-3 recurrence (SISO and MIMO), float64-capable.

Written from the paper's equations (Lahoti et al., arXiv 2603.15569) in mamba-ssm's conventions
(``mamba_ssm/modules/mamba3.py``); the mixer (models/mamba3.py) does the projections, the B/C
RMSNorms and the gate. Shapes (time before heads): x (b, l, H, P); Δ, A, λ (b, l, H); B, C
(b, l, R, G, N) with G dividing H (head i reads group i // (H / G)); θ (b, l, S) shared by every
head; B_bias, C_bias (H, R, N); D (H,); mimo_x (H, R, P) (None for SISO, R = 1). The state of a
head is (P, N); its first S coordinate pairs (2i, 2i + 1) rotate, the other N − 2S do not.

Per head h, rank r, step t (Δ = softplus(dd_dt + dt_bias), A < 0 per head and step, λ = sigmoid(trap)):

    φ_t   = φ_{t−1} + π tanh(θ_t) Δ_t                 (S,) accumulated angles, kept mod 2π
    k_t,r = Rot(φ_t) (B_t,r + B_bias_r)               q_t,r = Rot(φ_t) (C_t,r + C_bias_r)
    v_t,r = x_t ⊙ mimo_x_r                            (x_t for SISO)
    u_t   = Σ_r v_t,r ⊗ k_t,r                         (P, N)
    α_t = exp(Δ_t A_t),  β_t = (1 − λ_t) Δ_t α_t,  γ_t = λ_t Δ_t      (trapezoidal rule)
    h_t   = α_t h_{t−1} + β_t u_{t−1} + γ_t u_t
    y_t,r = h_t q_t,r + D v_t,r                       (b, l, R, H, P): gate and mimo_o come after

Rot(φ) turns pair i by φ_i: (a, b) → (a cos φ_i − b sin φ_i, a sin φ_i + b cos φ_i). The decode
state is (φ, h, k_{t−1}, x_{t−1}): angles (b, H, S), ssm (b, H, P, N), k (b, R, H, N) (rotated,
bias added, as mamba-ssm's ``k_state``), v (b, H, P) (x before mimo_x, as its ``v_state``).
A time loop is fine here: this is the specification the fast paths are tested against.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TWO_PI = 2 * math.pi


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 if ``x`` is, else float32 (bf16/fp16 inputs accumulate in fp32)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def rotate_pairs(t: Tensor, phi: Tensor) -> Tensor:
    """Turn pairs (2i, 2i + 1), i < S, of ``t`` (..., N) by ``phi`` (..., S); the rest unchanged."""
    s = phi.shape[-1]
    if s == 0:
        return t
    pairs = t[..., : 2 * s].unflatten(-1, (s, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    c, sn = torch.cos(phi), torch.sin(phi)
    turned = torch.stack([a * c - b * sn, a * sn + b * c], dim=-1).flatten(-2)
    return torch.cat([turned, t[..., 2 * s :]], dim=-1)


def heads_of(X: Tensor, h: int, bias: Tensor) -> Tensor:
    """B or C (..., R, G, N) → (..., R, H, N) with head i reading group i // (H / G), plus the
    per-head bias (H, R, N)."""
    return X.repeat_interleave(h // X.shape[-2], dim=-2) + bias.transpose(0, 1)


def rank_values(x: Tensor, mimo_x: Tensor | None) -> Tensor:
    """x (..., H, P) → v (..., R, H, P): x ⊙ mimo_x_r (mimo_x (H, R, P)), or x itself as R = 1."""
    if mimo_x is None:
        return x.unsqueeze(-3)
    return x.unsqueeze(-3) * mimo_x.transpose(0, 1).to(x.dtype)


def zero_state(b: int, h: int, p: int, n: int, s: int, r: int, ct: torch.dtype, device) -> tuple:
    """(angles (b, H, S), ssm (b, H, P, N), k (b, R, H, N), v (b, H, P)), all zero."""
    z = lambda *shape: torch.zeros(*shape, dtype=ct, device=device)
    return z(b, h, s), z(b, h, p, n), z(b, r, h, n), z(b, h, p)


def mamba3_step_ref(
    state: tuple,
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    trap: Tensor,
    B: Tensor,
    C: Tensor,
    theta: Tensor,
    B_bias: Tensor,
    C_bias: Tensor,
    D: Tensor | None = None,
    mimo_x: Tensor | None = None,
) -> tuple[Tensor, tuple]:
    """One step of the recurrence; also the torch decode path.

    state (angles, ssm, k, v) as in the module docstring; x (b, H, P); delta, A, trap (b, H)
    (Δ after softplus, A < 0, λ after sigmoid); B, C (b, R, G, N); theta (b, S). Returns
    y (b, R, H, P) in x's dtype and the new state (computed in fp32, float64 when x is)."""
    ct = compute_dtype(x)
    angles, ssm, k_prev, x_prev = (t.to(ct) for t in state)
    h = x.shape[1]
    dl = delta.to(ct)
    angles = torch.remainder(angles + math.pi * torch.tanh(theta.to(ct))[:, None, :] * dl[..., None], TWO_PI)
    k = rotate_pairs(heads_of(B.to(ct), h, B_bias.to(ct)), angles[:, None])  # (b, R, H, N)
    q = rotate_pairs(heads_of(C.to(ct), h, C_bias.to(ct)), angles[:, None])
    mx = None if mimo_x is None else mimo_x.to(ct)
    v, v_prev = rank_values(x.to(ct), mx), rank_values(x_prev, mx)  # (b, R, H, P)
    lam = trap.to(ct)
    alpha = torch.exp(dl * A.to(ct))
    beta, gamma = (1 - lam) * dl * alpha, lam * dl
    u_prev = torch.einsum("brhp,brhn->bhpn", v_prev, k_prev)
    u = torch.einsum("brhp,brhn->bhpn", v, k)
    ssm = alpha[..., None, None] * ssm + beta[..., None, None] * u_prev + gamma[..., None, None] * u
    y = torch.einsum("bhpn,brhn->brhp", ssm, q)
    if D is not None:
        y = y + D.to(ct)[:, None] * v
    return y.to(x.dtype), (angles, ssm, k, x.to(ct))


def mamba3_scan_ref(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    trap: Tensor,
    B: Tensor,
    C: Tensor,
    theta: Tensor,
    B_bias: Tensor,
    C_bias: Tensor,
    D: Tensor | None = None,
    mimo_x: Tensor | None = None,
    initial_state: tuple | None = None,
    return_final_state: bool = False,
):
    """The recurrence over a sequence, one :func:`mamba3_step_ref` per token.

    Returns y (b, l, R, H, P) in x's dtype, and with ``return_final_state`` also the final state
    (angles, ssm, k, v) in the compute dtype."""
    b, l, h, p = x.shape
    r, n, s = B.shape[2], B.shape[-1], theta.shape[-1]
    state = initial_state
    if state is None:
        state = zero_state(b, h, p, n, s, r, compute_dtype(x), x.device)
    ys = []
    for t in range(l):
        y, state = mamba3_step_ref(
            state, x[:, t], delta[:, t], A[:, t], trap[:, t], B[:, t], C[:, t], theta[:, t], B_bias, C_bias, D, mimo_x
        )
        ys.append(y)
    y = torch.stack(ys, dim=1)
    return (y, state) if return_final_state else y
