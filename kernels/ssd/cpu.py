"""The vectorised PyTorch SSD scan (Mamba-2) that CPU users run: the chunked "state-space dual"
form with matrix products, differentiated by autograd.

The sequence is cut into chunks of Q steps (zero-padded at the end: a padded step has Δ = 0,
so it neither decays nor feeds the state). With a_t the within-chunk cumulative sum of Δ_t A
(a per-head scalar, so decays between any two steps of a chunk are exp(a_t − a_s)):

    intra-chunk   y_t += Σ_{s ≤ t} exp(a_t − a_s) (C_t · B_s) Δ_s x_s    a masked (Q, Q) matrix product
    chunk states  S_c  = Σ_s exp(a_last − a_s) Δ_s x_s ⊗ B_s              (p, n) per head
    passing       H_{c+1} = exp(a_last) H_c + S_c                          one step per chunk
    inter-chunk   y_t += exp(a_t) H_c C_t                                  H_c: state entering the chunk

C·B is computed once per group and shared by its heads. Memory: a few (b, chunks, h, Q, Q) and
(b, chunks, h, p, n) tensors; autograd keeps them for the backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .reference import compute_dtype, process_dt, skip_and_gate


def _chunked(t: Tensor, n_chunks: int, Q: int) -> Tensor:
    """(b, l, ...) -> (b, n_chunks, Q, ...), zero-padding the end of the sequence."""
    pad = n_chunks * Q - t.shape[1]
    if pad:
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
    return t.reshape(t.shape[0], n_chunks, Q, *t.shape[2:])


def decay_matrix(acs: Tensor) -> Tensor:
    """exp(a_t − a_s) for t ≥ s, else 0: (..., Q) -> (..., Q, Q) indexed [t, s]. Masked before
    the exp so that no exp(+large) overflows, and no inf reaches autograd."""
    Q = acs.shape[-1]
    causal = torch.ones(Q, Q, dtype=torch.bool, device=acs.device).tril()
    diff = (acs[..., :, None] - acs[..., None, :]).masked_fill(~causal, float("-inf"))
    return torch.exp(diff)


def ssd_scan_cpu(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int = 256,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    initial_states: Tensor | None = None,
    dt_softplus: bool = False,
    return_final_states: bool = False,
):
    """Chunked SSD scan in PyTorch, the signature of :func:`ssd_scan_ref`.

    Shapes: x, z (b, l, h, p); dt (b, l, h); A, dt_bias (h,); B, C (b, l, g, n); D (h,) or
    (h, p); initial_states (b, h, p, n). Computes in float32 (float64 when x is float64).
    Returns y (b, l, h, p) in x's dtype, and with ``return_final_states`` also the final state
    (b, h, p, n) in the compute dtype.
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    ct = compute_dtype(x)
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    r = h // g  # heads per group
    Q = min(chunk_size, l)
    nc = -(-l // Q)
    delta = process_dt(dt, dt_bias, dt_softplus, ct)  # (b, l, h)
    # (b, nc, g, r, Q, ...): a group's heads side by side, time last but one for the matmuls
    dl = _chunked(delta, nc, Q).view(b, nc, Q, g, r).permute(0, 1, 3, 4, 2)
    xdt = _chunked(x.to(ct) * delta[..., None], nc, Q).view(b, nc, Q, g, r, p).permute(0, 1, 3, 4, 2, 5)
    Bc = _chunked(B.to(ct), nc, Q).permute(0, 1, 3, 2, 4)  # (b, nc, g, Q, n)
    Cc = _chunked(C.to(ct), nc, Q).permute(0, 1, 3, 2, 4)
    acs = torch.cumsum(dl * A.to(ct).view(g, r, 1), dim=-1)  # (b, nc, g, r, Q)

    CB = (Cc @ Bc.transpose(-1, -2)).unsqueeze(3)  # (b, nc, g, 1, Q, Q), shared by the group's heads
    y = (CB * decay_matrix(acs)) @ xdt  # intra-chunk, (b, nc, g, r, Q, p)

    to_end = torch.exp(acs[..., -1:] - acs)  # (b, nc, g, r, Q)
    S = (xdt * to_end[..., None]).transpose(-1, -2) @ Bc.unsqueeze(3)  # (b, nc, g, r, p, n)
    H = x.new_zeros(b, g, r, p, n, dtype=ct) if initial_states is None else initial_states.to(ct).view(b, g, r, p, n)
    chunk_decay = torch.exp(acs[..., -1])  # (b, nc, g, r)
    entering = []
    for c in range(nc):  # one step per chunk
        entering.append(H)
        H = chunk_decay[:, c, ..., None, None] * H + S[:, c]
    Hs = torch.stack(entering, dim=1)  # (b, nc, g, r, p, n)
    y = y + torch.exp(acs)[..., None] * (Cc.unsqueeze(3) @ Hs.transpose(-1, -2))  # inter-chunk

    y = y.permute(0, 1, 4, 2, 3, 5).reshape(b, nc * Q, h, p)[:, :l]
    y = skip_and_gate(y, x.to(ct), D, z, ct).to(x.dtype)
    return (y, H.reshape(b, h, p, n)) if return_final_states else y
