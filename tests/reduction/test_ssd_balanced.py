"""Mamba-2 group Gramians and balanced truncation (reduction/ssd.py) against float64 references."""

import numpy as np
import pytest
import torch

from compressmamba.reduction.mamba import mamba_energy
from compressmamba.reduction.ssd import Mamba2Stats, balance_groups, balanced_projections, group_gramians
from compressmamba.training import recipe_from_dict

F64 = torch.float64


def _draw(b, l, h, p, g, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=F64)
    x, B, C = r(b, l, h, p), r(b, l, g, n), r(b, l, g, n)
    delta = torch.nn.functional.softplus(r(b, l, h) - 1)
    A = -torch.rand(h, generator=gen, dtype=F64) * 2 - 0.1
    return x, delta, A, B, C


def _dense_gramians(batches, h, p, g, n):
    """The Gramians of reduction/ssd.py written out token by token and channel by channel."""
    P, Q = torch.zeros(g, n, n, dtype=F64), torch.zeros(g, n, n, dtype=F64)
    decay, count = torch.zeros(h, dtype=F64), 0
    bb, cc = torch.zeros(h, n, n, dtype=F64), torch.zeros(g, n, n, dtype=F64)
    for x, delta, A, B, C in batches:
        for i in range(x.shape[0]):
            for t in range(x.shape[1]):
                count += 1
                for k in range(g):
                    cc[k] += torch.outer(C[i, t, k], C[i, t, k])
                for j in range(h):
                    decay[j] += torch.exp(delta[i, t, j] * A[j])
                    for c in range(p):
                        v = delta[i, t, j] * x[i, t, j, c] * B[i, t, j * g // h]  # b_t of channel (j, c)
                        bb[j] += torch.outer(v, v)
    abar = decay / count
    for j in range(h):
        k = j * g // h
        P[k] += bb[j] / count / (1 - abar[j] ** 2)
        Q[k] += p * cc[k] / count / (1 - abar[j] ** 2)
    return P, Q


def test_group_gramians_and_hsvs_equal_a_dense_float64_reference():
    h, p, g, n = 4, 3, 2, 13
    batches = [_draw(2, 9, h, p, g, n, seed=s) for s in (0, 1)]
    parts = []
    for batch in batches:  # two "ranks", their sums added key by key
        s = Mamba2Stats(h, p, g, n)
        s.update(*batch)
        parts.append(s.as_dict())
    stats = {k: parts[0][k] + parts[1][k] for k in parts[0]}
    P, Q = group_gramians(stats, p)
    P_ref, Q_ref = _dense_gramians(batches, h, p, g, n)
    torch.testing.assert_close(P, P_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(Q, Q_ref, rtol=1e-10, atol=1e-12)
    sigma, T, Tinv = balance_groups(P, Q)
    for k in range(g):  # σ = sqrt(eig(P Q)) by a different algorithm (numpy's non-symmetric eig)
        ev = np.sort(np.sqrt(np.abs(np.linalg.eigvals(P_ref[k].numpy() @ Q_ref[k].numpy()))))[::-1]
        np.testing.assert_allclose(sigma[k].numpy(), ev, rtol=1e-7)
        torch.testing.assert_close(Tinv[k] @ T[k], torch.eye(n, dtype=F64), rtol=0, atol=1e-9)
        torch.testing.assert_close(Tinv[k] @ P[k] @ Tinv[k].T, torch.diag(sigma[k]), rtol=0, atol=1e-8 * sigma[k, 0])
        torch.testing.assert_close(T[k].T @ Q[k] @ T[k], torch.diag(sigma[k]), rtol=0, atol=1e-8 * sigma[k, 0])
    assert (sigma[:, :-1] >= sigma[:, 1:]).all() and sigma.shape == (g, n)
    # the per-state selection energies still come from the same stats (MambaStats' keys)
    assert mamba_energy(stats, "output", groups=g).shape == (g, n)


def _lti_group(h=4, p=3, g=2, n=13, m=15, q=14, seed=1):
    """A group-structured LTI system and calibration tokens whose averages are its Gramians:
    head h decays by a_h with constant Δ_h, channel (h, c) has constant input x = w[h, c], and
    B_t = B̃ u_t, C_t = C̃ v_t with u_t, v_t cycling through scaled unit vectors (E[u uᵀ] = I):
    so E_t[B_t B_tᵀ] = B̃ B̃ᵀ, E_t[C_t C_tᵀ] = C̃ C̃ᵀ exactly. Block (h, c) is the LTI system
    (a_h, Δ_h w[h, c] B̃, C̃ᵀ) with m inputs and q outputs."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(h, generator=gen, dtype=F64) * 0.65 + 0.3
    dt = torch.rand(h, generator=gen, dtype=F64) * 0.9 + 0.1
    w = torch.randn(h, p, generator=gen, dtype=F64)
    Bt, Ct = torch.randn(g, n, m, generator=gen, dtype=F64), torch.randn(g, n, q, generator=gen, dtype=F64)
    t = torch.arange(m * q * max(2, -(-16 // (m * q))))  # whole cycles, at least MIN_TOKENS
    U = torch.eye(m, dtype=F64)[t % m] * m**0.5
    V = torch.eye(q, dtype=F64)[(t // m) % q] * q**0.5
    B = torch.einsum("gnm,tm->tgn", Bt, U)[None]
    C = torch.einsum("gnq,tq->tgn", Ct, V)[None]
    s = Mamba2Stats(h, p, g, n)
    s.update(w.expand(1, t.numel(), h, p), dt.expand(1, t.numel(), h), torch.log(a) / dt, B, C)
    return s.as_dict(), a, dt, w, Bt, Ct


def _worst_block_hinf(Pi, a, dt, w, Bt, Ct, k, h, g):
    """max over the channels (h, c) of group k of ‖G_hc − Ĝ_hc‖_∞ for the kept-subspace projector
    Pi = W_Cᵀ W_B: G_hc(z) = Δ_h w_hc C̃ᵀ B̃ / (z − a_h), so the error is that scalar times
    C̃ᵀ (I − Pi) B̃, largest at z = 1 where |z − a_h| = 1 − a_h (0 < a_h < 1)."""
    core = torch.linalg.matrix_norm(Ct[k].T @ (torch.eye(Pi.shape[0], dtype=F64) - Pi) @ Bt[k], ord=2)
    heads = range(k * h // g, (k + 1) * h // g)
    return max((dt[j] * w[j].abs().max() / (1 - a[j]) * core).item() for j in heads)


def test_lti_case_obeys_the_balanced_truncation_bound_and_selection_does_not():
    """In the LTI case I ⊗ P_g, I ⊗ Q_g are generalised Gramians of the group's stacked channels,
    so every channel's H∞ error is at most 2 Σ_{i>r} σ_i. Keeping r raw coordinates instead
    breaks the bound for some r (the test can fail)."""
    h, p, g, n = 4, 3, 2, 13
    stats, a, dt, w, Bt, Ct = _lti_group(h, p, g, n)
    P, Q = group_gramians(stats, p)
    for k in range(g):  # the input-averaged sums are these LTI Gramians exactly
        heads = range(k * h // g, (k + 1) * h // g)
        want = sum(dt[j] ** 2 * (w[j] ** 2).sum() * Bt[k] @ Bt[k].T / (1 - a[j] ** 2) for j in heads)
        torch.testing.assert_close(P[k], want, rtol=1e-10, atol=1e-10)
    sigma, T, Tinv = balance_groups(P, Q)
    worst_raw = 0.0
    for r in range(1, n):
        W_B, W_C = balanced_projections(sigma, T, Tinv, torch.arange(r).expand(g, r))
        for k in range(g):
            bound = 2 * sigma[k, r:].sum().item()
            err = _worst_block_hinf(W_C[k].T @ W_B[k], a, dt, w, Bt, Ct, k, h, g)
            assert err <= bound, (r, k, err, bound)
            raw = torch.diag((torch.arange(n) < r).to(F64))
            worst_raw = max(worst_raw, _worst_block_hinf(raw, a, dt, w, Bt, Ct, k, h, g) / bound)
    W_B, W_C = balanced_projections(sigma, T, Tinv, torch.arange(n).expand(g, n))
    for k in range(g):
        assert _worst_block_hinf(W_C[k].T @ W_B[k], a, dt, w, Bt, Ct, k, h, g) < 1e-9
    assert worst_raw > 1.0


def test_zero_energy_coordinates_become_silent_states():
    """Rank-deficient Gramians (2 inputs, N = 7): the coordinates with σ = 0 get zero rows in
    both projections instead of overflowing, and keeping them adds nothing."""
    stats, *_ = _lti_group(h=2, p=2, g=1, n=7, m=2, q=3)
    sigma, T, Tinv = balance_groups(*group_gramians(stats, 2))
    assert torch.isfinite(T).all() and torch.isfinite(Tinv).all()
    assert (sigma[0, 2:] < 1e-5 * sigma[0, 0]).all()
    W_B, W_C = balanced_projections(sigma, T, Tinv, torch.arange(7)[None])
    assert W_B.abs().sum() > 0 and torch.isfinite(W_B).all() and torch.isfinite(W_C).all()
    with pytest.raises(ValueError, match=r"keep must be \(1, r\) indices in \[0, 7\)"):
        balanced_projections(sigma, T, Tinv, torch.tensor([[0, 7]]))


def test_bad_inputs_are_named():
    s = Mamba2Stats(4, 3, 2, 5)
    x, delta, A, B, C = _draw(1, 20, 4, 3, 2, 5)
    with pytest.raises(ValueError, match=r"B must be \(1, 20, 2, 5\), got \(1, 20, 2, 4\)"):
        s.update(x, delta, A, B[..., :4], C)
    s.update(x, delta, A, B, C)
    d = s.as_dict()
    with pytest.raises(ValueError, match="statistics lack \\['ssd_in'\\]"):
        group_gramians({k: v for k, v in d.items() if k != "ssd_in"}, 3)
    d["ssd_in"][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="'ssd_in' contains NaN"):
        group_gramians(d, 3)
    with pytest.raises(ValueError, match="groups=3 must divide heads=4"):
        Mamba2Stats(4, 3, 3, 5)


def test_mamba1_rejects_balanced_with_a_reason(tmp_path):
    s = Mamba2Stats(2, 2, 1, 4)
    s.update(*_draw(1, 20, 2, 2, 1, 4))
    with pytest.raises(ValueError, match="balanced truncation needs a scalar decay shared by all states"):
        mamba_energy(s.as_dict(), "balanced")
    recipe = {
        "name": "x",
        "out_dir": str(tmp_path),
        "model": {"name": "mamba", "d_model": 16, "n_layers": 1, "state_size": 8},
        "data": {"name": "text_lm", "corpus": "python_stdlib", "max_bytes": 10_000, "seq_len": 16},
        "train": {"steps": 4, "batch_size": 2},
        "reduction": {"mode": "fixed", "method": "balanced", "attempts": [2]},
    }
    with pytest.raises(ValueError, match=r"reduction.method = 'balanced'.*Mamba-2 layers only"):
        recipe_from_dict(recipe)
    recipe["model"] = {"name": "mamba2", "d_model": 16, "n_layers": 1, "state_size": 8, "head_dim": 8}
    assert recipe_from_dict(recipe).reduction.method == "balanced"
