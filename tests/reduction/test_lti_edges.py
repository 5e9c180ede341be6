"""Balanced truncation at the edges: zero Hankel energy (C = 0, B = 0, some modes silent), ranks."""

import pytest
import torch

from compressmamba.models.lru import LRULayer
from compressmamba.reduction.lti import balanced_truncation, hankel_singular_values, transfer_function

_Z = torch.exp(1j * torch.linspace(0, 2 * torch.pi, 257, dtype=torch.float64))


def _system(n, p=3, q=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    mag = 0.3 + 0.65 * torch.rand(n, generator=g, dtype=torch.float64)
    lam = mag * torch.exp(1j * 3.0 * torch.rand(n, generator=g, dtype=torch.float64))
    B = torch.complex(
        torch.randn(n, p, generator=g, dtype=torch.float64), torch.randn(n, p, generator=g, dtype=torch.float64)
    )
    C = torch.complex(
        torch.randn(q, n, generator=g, dtype=torch.float64), torch.randn(q, n, generator=g, dtype=torch.float64)
    )
    return lam, B, C


def _hinf(lam, B, C, A_r, B_r, C_r):
    return torch.linalg.matrix_norm(
        transfer_function(lam, B, C, _Z) - transfer_function(A_r, B_r, C_r, _Z), ord=2
    ).max()


def _finite(*ts):
    return all(torch.isfinite(torch.view_as_real(t)).all() for t in ts)


@pytest.mark.parametrize("method", ["sqrtm", "chol"])
@pytest.mark.parametrize("zero", ["C", "B"])
@pytest.mark.parametrize("n,r", [(5, 1), (7, 3), (13, 12)])
def test_zero_hankel_energy_gives_a_finite_exact_reduced_system(method, zero, n, r):
    lam, B, C = _system(n, seed=n + r)
    if zero == "C":
        C = torch.zeros_like(C)
    else:
        B = torch.zeros_like(B)
    assert hankel_singular_values(lam, B, C).max() == 0
    A_r, B_r, C_r = balanced_truncation(lam, B, C, r, method=method)
    assert A_r.shape == (r, r) and _finite(A_r, B_r, C_r)
    assert torch.linalg.eigvals(A_r).abs().max() < 1  # stable
    assert _hinf(lam, B, C, A_r, B_r, C_r) <= 1e-12  # G = 0 and G_r = 0


@pytest.mark.parametrize("keep", [[0, 1, 2, 3], [0, 4], [5, 6], [1, 3, 5, 6]])
def test_silent_modes_are_kept_finite_and_the_bound_holds(keep):
    lam, B, C = _system(7, seed=3)
    C[:, 4:] = 0  # modes 4, 5, 6 unobservable: three zero Hankel singular values
    sigma = hankel_singular_values(lam, B, C)
    assert (sigma[-2:] == 0).all() or sigma[-2:].max() < 1e-6 * sigma[0]
    A_r, B_r, C_r = balanced_truncation(lam, B, C, keep=keep)
    assert _finite(A_r, B_r, C_r) and torch.linalg.eigvals(A_r).abs().max() < 1
    dropped = [i for i in range(7) if i not in keep]
    bound = 2 * sigma[dropped].sum()
    assert _hinf(lam, B, C, A_r, B_r, C_r) <= bound * (1 + 1e-6) + 1e-10


def test_unobservable_lru_layer_keeps_one_state_and_stays_finite():
    torch.manual_seed(1)
    layer = LRULayer(d_model=4, state_size=6)
    with torch.no_grad():
        layer.C_re.zero_()
        layer.C_im.zero_()
    e = layer.energy()
    assert e.max() == 0
    layer.truncate_(torch.tensor([0]))
    assert layer.state_size == 1
    assert all(torch.isfinite(p).all() for p in layer.parameters())
    u = torch.randn(2, 9, 4)
    torch.testing.assert_close(layer(u), u * layer.D)  # still unobservable: only the skip path


@pytest.mark.parametrize("rank", [2.5, 2.0, "2", True, None, 0, 5])
def test_rank_must_be_an_integer_in_range(rank):
    lam, B, C = _system(5)
    with pytest.raises(ValueError, match=r"rank must be an integer in \[1, 4\], got"):
        balanced_truncation(lam, B, C, rank)


def test_integer_rank_types_are_accepted():
    import numpy as np

    lam, B, C = _system(5)
    for rank in (2, np.int64(2)):
        assert balanced_truncation(lam, B, C, rank)[0].shape == (2, 2)
