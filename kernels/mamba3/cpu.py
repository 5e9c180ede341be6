"""The vectorised PyTorch Mamba-3 scan that CPU users run: chunked matrix products, differentiated
by autograd; equal to :func:`reference.mamba3_scan_ref` (tests/kernels/test_mamba3_cpu.py).

The trapezoidal rule folds into one weight per input: u_s enters h_t (s < t) as
γ_s ∏_{s<j≤t} α_j + β_{s+1} ∏_{s+1<j≤t} α_j = (γ_s + σ_s) ∏_{s<j≤t} α_j with σ_s = (1 − λ_{s+1}) Δ_{s+1},
and at s = t with γ_t alone. With a_t = Σ_{j≤t} Δ_j A_j (a scalar per head) and w_s = γ_s + σ_s:

    h_t = exp(a_t) H̃_0 + Σ_{s≤t} exp(a_t − a_s) w_s u_s − σ_t u_t,     H̃_0 = h_{−1} + σ_{−1} u_{−1}

(σ_{−1} = (1 − λ_0) Δ_0 carries the initial k and v). The sums without the −σ_t u_t correction,
H̃, are what passes from chunk to chunk (the next step adds β u_t = σ_t α u_t back); σ at the last
token is 0, so H̃ there is the final state. Per chunk of Q tokens (zero-padded: Δ = 0 neither
decays nor feeds the state):

    intra   y_t,r += Σ_{s≤t, r'} exp(a_t − a_s) w_s (q_t,r · k_s,r') v_s,r' − σ_t Σ_r' (q_t,r · k_t,r') v_t,r'
    states  S_c = Σ_s exp(a_last − a_s) w_s u_s,   H̃_{c+1} = exp(a_last) H̃_c + S_c
    inter   y_t,r += exp(a_t) H̃_c q_t,r
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .reference import TWO_PI, compute_dtype, heads_of, rank_values, rotate_pairs, zero_state


def _chunked(t: Tensor, nc: int, q: int) -> Tensor:
    """(b, l, ...) → (b, nc, Q, ...), zero-padding the end of the sequence."""
    pad = nc * q - t.shape[1]
    if pad:
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
    return t.reshape(t.shape[0], nc, q, *t.shape[2:])


def _decay(acs: Tensor) -> Tensor:
    """exp(a_t − a_s) for t ≥ s else 0: (..., Q) → (..., Q, Q), masked before the exp."""
    q = acs.shape[-1]
    causal = torch.ones(q, q, dtype=torch.bool, device=acs.device).tril()
    return torch.exp((acs[..., :, None] - acs[..., None, :]).masked_fill(~causal, float("-inf")))


def rotated_keys(B, C, theta, delta, B_bias, C_bias, angle0, h: int, ct):
    """Accumulated angles φ (b, l, H, S) mod 2π and the rotated k, q (b, l, R, H, N)."""
    phi = torch.cumsum(math.pi * torch.tanh(theta.to(ct))[:, :, None, :] * delta[..., None], dim=1)
    phi = torch.remainder(phi + angle0[:, None], TWO_PI)
    k = rotate_pairs(heads_of(B.to(ct), h, B_bias.to(ct)), phi[:, :, None])
    q = rotate_pairs(heads_of(C.to(ct), h, C_bias.to(ct)), phi[:, :, None])
    return phi, k, q


def mamba3_scan_cpu(
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
    chunk_size: int = 64,
):
    """Chunked Mamba-3 scan, the signature of :func:`mamba3_scan_ref` plus ``chunk_size``."""
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    ct = compute_dtype(x)
    b, l, h, p = x.shape
    r, n, s_ang = B.shape[2], B.shape[-1], theta.shape[-1]
    angle0, h0, k0, x0 = (t.to(ct) for t in (initial_state or zero_state(b, h, p, n, s_ang, r, ct, x.device)))
    dl, lam = delta.to(ct), trap.to(ct)
    phi, k, q = rotated_keys(B, C, theta, dl, B_bias, C_bias, angle0, h, ct)
    mx = None if mimo_x is None else mimo_x.to(ct)
    v = rank_values(x.to(ct), mx)  # (b, l, R, H, P)
    sigma = F.pad(((1 - lam) * dl)[:, 1:], (0, 0, 0, 1))  # (b, l, H): σ_t, 0 at the last token
    w = lam * dl + sigma
    sigma0 = (1 - lam[:, 0]) * dl[:, 0]  # σ_{−1}
    H = h0 + sigma0[..., None, None] * torch.einsum("brhp,brhn->bhpn", rank_values(x0, mx), k0)

    Q = min(chunk_size, l)
    nc = -(-l // Q)
    acs = torch.cumsum(_chunked(dl * A.to(ct), nc, Q), dim=2)  # (b, nc, Q, H)
    kc, qc, vc = (_chunked(t, nc, Q) for t in (k, q, v))  # (b, nc, Q, R, H, ·)
    wc, sc = _chunked(w, nc, Q), _chunked(sigma, nc, Q)  # (b, nc, Q, H)
    scores = torch.einsum("bctrhn,bcsqhn->bchtrsq", qc, kc)  # (b, nc, H, Q, R, Q, R)
    L = _decay(acs.transpose(2, 3)) * wc.transpose(2, 3)[..., None, :]  # (b, nc, H, Q, Q)
    y = torch.einsum("bchts,bchtrsq,bcsqhp->bctrhp", L, scores, vc)
    diag = torch.diagonal(scores, dim1=3, dim2=5)  # (b, nc, H, R, R, Q)
    y = y - torch.einsum("bchrqt,bcth,bctqhp->bctrhp", diag, sc, vc)

    last = acs[:, :, -1:]  # (b, nc, 1, H)
    kw = kc * (torch.exp(last - acs) * wc)[:, :, :, None, :, None]
    S = torch.einsum("bcsqhp,bcsqhn->bchpn", vc, kw)  # chunk states
    entering = []
    for c in range(nc):
        entering.append(H)
        H = torch.exp(last[:, c, 0])[..., None, None] * H + S[:, c]
    Hin = torch.stack(entering, dim=1)  # (b, nc, H, P, N)
    y = y + torch.einsum("bchpn,bctrhn,bcth->bctrhp", Hin, qc, torch.exp(acs))
    y = y.reshape(b, nc * Q, r, h, p)[:, :l]
    if D is not None:
        y = y + D.to(ct)[:, None] * v
    y = y.to(x.dtype)
    if not return_final_state:
        return y
    return y, (phi[:, -1].contiguous(), H, k[:, -1].contiguous(), x[:, -1].to(ct))
