import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compressmamba.reduction import (
    balanced_truncation,
    gramians_diagonal,
    hankel_singular_values,
    lru_to_lti,
    lti_to_lru,
    rank_for_energy,
    select_states,
    transfer_function,
)


def random_system(n, p=2, q=3, r_min=0.3, r_max=0.95, seed=0):
    g = torch.Generator().manual_seed(seed)
    mag = r_min + (r_max - r_min) * torch.rand(n, generator=g, dtype=torch.float64)
    ph = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    lam = torch.polar(mag, ph)
    B = torch.complex(
        torch.randn(n, p, generator=g, dtype=torch.float64), torch.randn(n, p, generator=g, dtype=torch.float64)
    )
    C = torch.complex(
        torch.randn(q, n, generator=g, dtype=torch.float64), torch.randn(q, n, generator=g, dtype=torch.float64)
    )
    return lam, B, C


def hinf(A, B, C, A2, B2, C2, m=4000):
    z = torch.exp(1j * torch.linspace(0, 2 * math.pi, m, dtype=torch.float64))
    E = transfer_function(A, B, C, z) - transfer_function(A2, B2, C2, z)
    return torch.linalg.matrix_norm(E, ord=2).max().item()


@pytest.mark.parametrize("n", [1, 5, 13])
def test_gramians_solve_lyapunov_and_match_scipy(n):
    lam, B, C = random_system(n, seed=n)
    P, Q = gramians_diagonal(lam, B, C)
    A = torch.diag(lam)
    resP = A @ P @ A.conj().T - P + B @ B.conj().T
    resQ = A.conj().T @ Q @ A - Q + C.conj().T @ C
    assert resP.abs().max() < 1e-10 and resQ.abs().max() < 1e-10
    P_sp = scipy.linalg.solve_discrete_lyapunov(A.numpy(), (B @ B.conj().T).resolve_conj().numpy())
    Q_sp = scipy.linalg.solve_discrete_lyapunov(A.conj().T.resolve_conj().numpy(), (C.conj().T @ C).numpy())
    np.testing.assert_allclose(P.numpy(), P_sp, atol=1e-9 * np.abs(P_sp).max())
    np.testing.assert_allclose(Q.numpy(), Q_sp, atol=1e-9 * np.abs(Q_sp).max())


def test_hsv_invariant_under_similarity():
    n = 7
    lam, B, C = random_system(n, seed=3)
    sigma = hankel_singular_values(lam, B, C)
    g = torch.Generator().manual_seed(1)
    T = torch.complex(
        torch.randn(n, n, generator=g, dtype=torch.float64), torch.randn(n, n, generator=g, dtype=torch.float64)
    )
    A2 = torch.linalg.solve(T, torch.diag(lam) @ T)
    B2, C2 = torch.linalg.solve(T, B), C @ T
    P2 = scipy.linalg.solve_discrete_lyapunov(A2.numpy(), (B2 @ B2.conj().T).numpy())
    Q2 = scipy.linalg.solve_discrete_lyapunov(A2.conj().T.resolve_conj().numpy(), (C2.conj().T @ C2).numpy())
    s2 = np.sort(np.sqrt(np.abs(np.linalg.eigvals(P2 @ Q2))))[::-1]
    np.testing.assert_allclose(sigma.numpy(), s2, rtol=1e-6)
    # and sqrt(eig(PQ)) of the diagonal system itself
    P, Q = gramians_diagonal(lam, B, C)
    s1 = np.sort(np.sqrt(np.abs(np.linalg.eigvals((P @ Q).numpy()))))[::-1]
    np.testing.assert_allclose(sigma.numpy(), s1, rtol=1e-8)


@pytest.mark.parametrize("method", ["sqrtm", "chol"])
@pytest.mark.parametrize("n,r", [(6, 1), (12, 5), (20, 13)])
def test_truncation_obeys_error_bound(method, n, r):
    lam, B, C = random_system(n, seed=n + r)
    sigma = hankel_singular_values(lam, B, C)
    Ar, Br, Cr = balanced_truncation(lam, B, C, r, method=method)
    err = hinf(lam, B, C, Ar, Br, Cr)
    bound = 2 * sigma[r:].sum().item()
    assert err <= bound * (1 + 1e-6) + 1e-10
    assert err > 0  # the test can fail: something was removed


def test_balanced_realisation_has_equal_diagonal_gramians():
    lam, B, C = random_system(9, seed=4)
    sigma = hankel_singular_values(lam, B, C)
    for method in ("sqrtm", "chol"):
        Ab, Bb, Cb = balanced_truncation(lam, B, C, keep=torch.arange(9), method=method)
        P = scipy.linalg.solve_discrete_lyapunov(Ab.numpy(), (Bb @ Bb.conj().T).resolve_conj().numpy())
        Q = scipy.linalg.solve_discrete_lyapunov(
            Ab.conj().T.resolve_conj().numpy(), (Cb.conj().T @ Cb).resolve_conj().numpy()
        )
        np.testing.assert_allclose(P, np.diag(sigma.numpy()), atol=1e-7 * sigma[0].item())
        np.testing.assert_allclose(Q, np.diag(sigma.numpy()), atol=1e-7 * sigma[0].item())


def test_lru_round_trip_reproduces_transfer_function():
    lam, B, C = random_system(8, seed=5)
    Ar, Br, Cr = balanced_truncation(lam, B, C, 5)
    p = lti_to_lru(Ar, Br, Cr)
    lam2, B2, C2 = lru_to_lti(**p)
    z = torch.exp(1j * torch.linspace(0, 2 * math.pi, 500, dtype=torch.float64))
    G1 = transfer_function(Ar, Br, Cr, z)
    G2 = transfer_function(lam2, B2, C2, z)
    assert (G1 - G2).abs().max() / G1.abs().max() < 1e-8


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 16), r_min=st.floats(0.0, 0.9), spread=st.floats(0.01, 0.099), seed=st.integers(0, 10_000))
def test_property_bound_and_ordering(n, r_min, spread, seed):
    lam, B, C = random_system(n, r_min=r_min, r_max=min(r_min + spread * 10, 0.999), seed=seed)
    sigma = hankel_singular_values(lam, B, C)
    assert (sigma[:-1] >= sigma[1:] - 1e-12).all() and (sigma >= 0).all()
    r = rank_for_energy(sigma, 0.1)
    assert sigma[:r].sum() >= 0.9 * sigma.sum() * (1 - 1e-9)
    assert r == 1 or sigma[: r - 1].sum() < 0.9 * sigma.sum()
    if r < n:
        Ar, Br, Cr = balanced_truncation(lam, B, C, r)
        assert hinf(lam, B, C, Ar, Br, Cr, m=1500) <= 2 * sigma[r:].sum().item() * (1 + 1e-5) + 1e-9


def test_rank_for_energy_examples():
    s = torch.tensor([4.0, 3.0, 2.0, 1.0])
    assert rank_for_energy(s, 0.0) == 4
    assert rank_for_energy(s, 0.1) == 3  # cumsum 4, 7, 9, 10: 9 >= 0.9 * 10
    assert rank_for_energy(s, 0.15) == 3
    assert rank_for_energy(s, 0.5) == 2
    assert rank_for_energy(s, 0.99) == 1


@pytest.mark.parametrize("bad", [float("nan"), -0.1, 1.0])
def test_bad_tau(bad):
    with pytest.raises(ValueError, match="tau"):
        rank_for_energy(torch.tensor([2.0, 1.0]), bad, layer="blocks.0")


def test_bad_inputs_name_layer_and_value():
    lam, B, C = random_system(4)
    with pytest.raises(ValueError, match="layer blocks.3.*1.2"):
        hankel_singular_values(torch.cat([lam[:3], torch.tensor([1.2 + 0j], dtype=lam.dtype)]), B, C, layer="blocks.3")
    Bn = B.clone()
    Bn[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        gramians_diagonal(lam, Bn, C, layer="x")
    with pytest.raises(ValueError, match="rank"):
        balanced_truncation(lam, B, C, 4)
    with pytest.raises(ValueError, match="rank"):
        balanced_truncation(lam, B, C, 0)
    with pytest.raises(ValueError, match="NaN"):
        rank_for_energy(torch.tensor([1.0, float("nan")]), 0.1)


def test_selection_modes():
    e = torch.tensor([0.1, 5.0, 0.3, 2.0, 0.2])
    assert select_states(e, 2, "largest").tolist() == [1, 3]
    assert select_states(e, 2, "smallest").tolist() == [0, 4]
    a = select_states(e, 3, "random", torch.Generator().manual_seed(3))
    b = select_states(e, 3, "random", torch.Generator().manual_seed(3))
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 3


@pytest.mark.slow
def test_a_512_state_cut_meets_the_bound_with_gramians_from_scipy():
    """At the size of a large layer (n = 512, 8 inputs and outputs), against references that share
    no code with the library: the leading Hankel singular values from Gramians that scipy's
    Lyapunov solver computes, and the reduced system's H-infinity error on a frequency grid
    within 2·Σ of the dropped σ."""
    lam, B, C = random_system(512, p=8, q=8, seed=9)
    A = np.diag(lam.numpy())
    Bn, Cn = B.numpy(), C.numpy()
    P = scipy.linalg.solve_discrete_lyapunov(A, Bn @ Bn.conj().T)
    Q = scipy.linalg.solve_discrete_lyapunov(A.conj().T, Cn.conj().T @ Cn)
    eps = 1e-12 * np.eye(512)  # a tiny ridge so both Cholesky factors exist; the top σ do not feel it
    Lc = scipy.linalg.cholesky((P + P.conj().T) / 2 + eps * np.trace(P).real, lower=True)
    Lo = scipy.linalg.cholesky((Q + Q.conj().T) / 2 + eps * np.trace(Q).real, lower=True)
    ref = scipy.linalg.svdvals(Lo.conj().T @ Lc)  # σ = sqrt(eig(P Q)), descending
    sigma = hankel_singular_values(lam, B, C)
    np.testing.assert_allclose(sigma[:64].numpy(), ref[:64], rtol=1e-6)
    Ar, Br, Cr = balanced_truncation(lam, B, C, 64)
    assert Ar.shape == (64, 64) and Br.shape == (64, 8) and Cr.shape == (8, 64)
    assert hinf(lam, B, C, Ar, Br, Cr, m=1500) <= 2 * ref[64:].sum() * (1 + 1e-5)
