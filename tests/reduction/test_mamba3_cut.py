"""Mamba-3 cuts: the output energy of a mode is exactly what removing it changes; a turned pair is
one mode; keeping every mode is the identity; a cut is the uncut layer with the dropped modes' B
and C zeroed after the norm, the RMSNorm's mean square then taken over the kept coordinates (and
not over N: that part is not preserved, shown too); the state maps carry Adam moments."""

import math

import pytest
import torch
from compressmamba.kernels.mamba3 import mamba3_scan_ref

from compressmamba.models.mamba3 import build_mamba3
from compressmamba.reduction.mamba3 import Mamba3Stats, mode_coordinates, mode_energy


def _zero_modes(inp, coords):
    """The scan's inputs with state coordinates ``coords`` silenced (B, C and both biases zero)."""
    out = dict(inp)
    for k in ("B", "C", "B_bias", "C_bias"):
        t = out[k].clone()
        t[..., coords] = 0
        out[k] = t
    return out


@pytest.mark.parametrize("mimo", [False, True])
def test_output_energy_is_what_removing_the_mode_changes(mimo):
    b, l, h, n, s = 2, 17, 4, 10, 3  # 3 turned pairs, 4 unturned coordinates
    mixer = _layer(mimo, seed=3)
    with torch.no_grad():
        _, inp = mixer._prepare(torch.randn(b, l, 16, dtype=torch.float64))
    stats = Mamba3Stats(h, n, s)
    stats.update(inp)
    sums = stats.as_dict()
    e = mode_energy(sums, "output", s, n)
    assert e.shape == (n - s,)
    y = mamba3_scan_ref(**inp)
    for mode in range(n - s):
        coords, _ = mode_coordinates(torch.tensor([mode]), s)
        change = (y - mamba3_scan_ref(**_zero_modes(inp, coords))).pow(2).sum() / (b * l)
        assert abs(change.item() - e[mode].item()) < 1e-9 * max(1.0, change.item())
    # a pair's halves alone are not modes: silencing one coordinate of a pair changes the other's output
    half = (y - mamba3_scan_ref(**_zero_modes(inp, torch.tensor([0])))).pow(2).sum() / (b * l)
    assert abs(half.item() - e[0].item()) > 1e-6


def test_hankel_energy_is_finite_positive_per_mode():
    mixer = _layer(True, seed=4)
    with torch.no_grad():
        _, inp = mixer._prepare(torch.randn(2, 20, 16, dtype=torch.float64))
    stats = Mamba3Stats(4, 10, 3)
    stats.update(inp)
    e = mode_energy(stats.as_dict(), "hankel", 3, 10)
    assert e.shape == (7,) and (e > 0).all() and torch.isfinite(e).all()
    with pytest.raises(ValueError, match="energy method must be one of"):
        mode_energy(stats.as_dict(), "balanced", 3, 10)


def _layer(mimo=True, seed=0, n=10, rope=1.0):
    torch.manual_seed(seed)
    m = build_mamba3(d_model=16, n_layers=1, state_size=n, head_dim=8, n_groups=2, vocab_size=11,
                     is_mimo=mimo, mimo_rank=2, rope_fraction=rope, rope_angles=[3])  # fmt: skip
    with torch.no_grad():
        for name, prm in m.named_parameters():
            if prm.dim() <= 3 and "embeddings" not in name:
                prm.copy_(1 + 0.3 * torch.randn_like(prm))
    return m.double().ssm_layers()[0]


def test_keeping_every_mode_is_the_identity():
    mixer = _layer()
    before = {k: v.clone() for k, v in mixer.state_dict().items()}
    assert mixer.truncate_(torch.arange(7)) == {}
    assert all(torch.equal(v, before[k]) for k, v in mixer.state_dict().items())


@pytest.mark.parametrize("mimo", [False, True])
def test_cut_is_zeroing_with_the_norm_over_kept_coordinates(mimo):
    """N = 10 with S = 3 pairs: keep pairs 0 and 2 and unturned coordinates 7 and 9 (modes 4, 6)."""
    mixer = _layer(mimo)
    u = torch.randn(2, 13, 16, dtype=torch.float64)
    keep = torch.tensor([0, 2, 4, 6])
    coords, s_new = mode_coordinates(keep, 3)
    assert coords.tolist() == [0, 1, 4, 5, 7, 9] and s_new == 2
    with torch.no_grad():
        z, args = mixer._prepare(u)
        raw = {}  # B, C before the norm, so the test can normalise them over the kept coordinates
        proj, rgn = mixer.in_proj(u), mixer.rank * 2 * 10
        raw["B"], raw["C"] = (
            proj[..., 64 + i * rgn : 64 + (i + 1) * rgn].unflatten(-1, (mixer.rank, 2, 10)) for i in (0, 1)
        )
        masked = dict(args)
        for key, w in (("B", mixer.B_norm.weight), ("C", mixer.C_norm.weight)):
            kept = raw[key][..., coords]
            normed = torch.zeros_like(raw[key])
            normed[..., coords] = kept * torch.rsqrt(kept.pow(2).mean(-1, keepdim=True) + 1e-5) * w[coords]
            masked[key] = normed
        masked = _zero_modes(masked, torch.tensor([c for c in range(10) if c not in coords.tolist()]))
        want = mixer._output(mamba3_scan_ref(**masked), z)
        norm_over_n = _zero_modes(args, torch.tensor([c for c in range(10) if c not in coords.tolist()]))
        not_kept = mixer._output(mamba3_scan_ref(**norm_over_n), z)
        old = {k: v.clone() for k, v in mixer.named_parameters()}
        maps = mixer.truncate_(keep)
        got = mixer(u)
    assert mixer.state_size == 6 and mixer.n_angles == 2 and mixer.config.rope_angles == [2]
    assert ((got - want).norm() / want.norm()).item() < 1e-12
    assert ((got - not_kept).norm() / not_kept.norm()).item() > 1e-4  # the norm over N is not preserved
    new = dict(mixer.named_parameters())
    assert sorted(maps) == ["B_bias", "B_norm.weight", "C_bias", "C_norm.weight", "in_proj.weight"]
    for name, fn in maps.items():  # a moment shaped like the old parameter maps as the parameter did
        assert torch.equal(fn(old[name]), new[name])


def test_truncate_rejects_bad_keep():
    mixer = _layer(False)
    for bad in ([0, 0], [7], [-1], []):
        with pytest.raises(ValueError, match=r"keep must be distinct mode indices in \[0, 7\)"):
            mixer.truncate_(torch.tensor(bad, dtype=torch.long))


def test_energy_without_enough_tokens_names_the_layer():
    mixer = _layer(False)
    mixer.start_stats()
    with torch.no_grad():
        mixer(torch.randn(1, 3, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="layer layers.0: calibration saw 3 tokens"):
        mixer.energy(mixer.pop_stats(), "output")


def _transform(inp, coords, M_B, M_C, groups):
    """B ← M_B B, C ← M_C C on ``coords`` (M per group, (G, k, k)), biases of each head with its
    group's M: a change of basis of those state coordinates."""
    out = dict(inp)
    h = inp["B_bias"].shape[0]
    per_head = lambda M: M.repeat_interleave(h // groups, dim=0)  # noqa: E731
    for key, M in (("B", M_B), ("C", M_C)):
        t = out[key].clone()
        t[..., coords] = torch.einsum("gij,...gj->...gi", M, t[..., coords])
        out[key] = t
        bias = out[key + "_bias"].clone()
        bias[..., coords] = torch.einsum("hij,hrj->hri", per_head(M), bias[..., coords])
        out[key + "_bias"] = bias
    return out


@pytest.mark.parametrize("mimo", [False, True])
def test_what_a_change_of_basis_preserves(mimo):
    """What balanced truncation could use (docs/design.md, "Mamba-3"): any invertible T per group on
    the unturned coordinates (B̂ = T⁻¹B, Ĉ = TᵀC, biases alike) keeps every output, trapezoidal term
    included; on a turned pair only a complex scalar does (k ← ρR(ψ)k, q ← ρ⁻¹R(ψ)q); a real map that
    mixes two pairs, or a pair with an unturned coordinate, does not."""
    mixer = _layer(mimo, seed=5)  # N = 10, S = 3: pairs (0,1) (2,3) (4,5), unturned 6..9, G = 2
    with torch.no_grad():
        _, inp = mixer._prepare(torch.randn(2, 15, 16, dtype=torch.float64))
    y = mamba3_scan_ref(**inp)
    gen = torch.Generator().manual_seed(0)
    T = torch.eye(4, dtype=torch.float64) + 0.4 * torch.randn(2, 4, 4, generator=gen, dtype=torch.float64)
    free = torch.arange(6, 10)
    same = mamba3_scan_ref(**_transform(inp, free, torch.linalg.inv(T), T.transpose(1, 2), 2))
    assert ((same - y).norm() / y.norm()).item() < 1e-10

    rho, psi = 1.7, 0.9
    turn = torch.tensor([[math.cos(psi), -math.sin(psi)], [math.sin(psi), math.cos(psi)]], dtype=torch.float64)
    pair = torch.arange(2, 4)
    scalar = mamba3_scan_ref(**_transform(inp, pair, (rho * turn).expand(2, 2, 2), (turn / rho).expand(2, 2, 2), 2))
    assert ((scalar - y).norm() / y.norm()).item() < 1e-10

    for mixed in (torch.tensor([0, 2]), torch.tensor([1, 7])):  # two pairs; a pair and an unturned coordinate
        M = torch.tensor([[1.0, 0.5], [0.2, 1.0]], dtype=torch.float64).expand(2, 2, 2)
        moved = mamba3_scan_ref(**_transform(inp, mixed, torch.linalg.inv(M), M.transpose(1, 2), 2))
        assert ((moved - y).norm() / y.norm()).item() > 1e-4


def _calibrated(mixer, method, seed=0):
    mixer.start_stats()
    with torch.no_grad():
        mixer(torch.randn(2, 24, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return mixer.energy(mixer.pop_stats(), method)


@pytest.mark.parametrize("mimo", [False, True])
def test_balanced_with_every_unturned_coordinate_is_the_selection_cut(mimo):
    """Keeping every balanced coordinate is a change of basis of the unturned part (exact), so a
    balanced cut that drops only pair 1 equals the selection cut that drops pair 1."""
    u = torch.randn(2, 11, 16, dtype=torch.float64)
    sel, bal = _layer(mimo, seed=6), _layer(mimo, seed=6)
    e = _calibrated(bal, "balanced")
    assert e.shape == (7,) and (e[3:].diff() <= 1e-12).all()  # σ summed over groups, descending
    keep = torch.tensor([0, 2, 3, 4, 5, 6])
    sel.truncate_(keep)
    maps = bal.truncate_(keep)
    assert bal.bc_proj.B.shape == (2, 4, 4) and bal.config.bc_proj_in == [4] and bal.state_size == 8
    assert maps["B_bias"] is None and maps["bc_proj.B"] is None and maps["in_proj.weight"] is not None
    with torch.no_grad():
        assert ((bal(u) - sel(u)).norm() / sel(u).norm()).item() < 1e-9


def test_balanced_cut_composes_and_reloads(tmp_path):
    from compressmamba.models import load_pretrained

    torch.manual_seed(0)
    m = build_mamba3(d_model=16, n_layers=1, state_size=12, head_dim=8, n_groups=2, vocab_size=11,
                     is_mimo=True, mimo_rank=2).double()  # fmt: skip
    mixer = m.ssm_layers()[0]  # S = 3: 9 modes
    _calibrated(mixer, "balanced")
    mixer.truncate_(torch.tensor([0, 1, 3, 4, 5, 6]))  # pairs 0, 1; 4 of 6 balanced coordinates
    assert mixer.state_size == 8 and mixer.bc_width == 10 and mixer.config.rope_angles == [2]
    _calibrated(mixer, "balanced", seed=1)
    mixer.truncate_(torch.tensor([0, 2, 3]))  # pair 0, 2 balanced coordinates: composed with the first
    assert mixer.bc_proj.B.shape == (2, 2, 6) and m.config.bc_proj_in == [6] and m.state_sizes == [4]
    _calibrated(mixer, "output")
    mixer.truncate_(torch.tensor([0, 2]))  # a selection on a projected layer slices bc_proj's rows
    assert mixer.bc_proj.B.shape == (2, 1, 6) and m.state_sizes == [3]
    m.save_pretrained(tmp_path)
    back = load_pretrained(tmp_path).double()
    ids = torch.randint(0, 11, (2, 9))
    with torch.no_grad():
        assert torch.allclose(back(ids).logits, m(ids).logits, atol=1e-10)
        full, cache = m(ids).logits, __import__("compressmamba.models.mamba3", fromlist=["x"]).Mamba3Cache(1)
        steps = [m(ids[:, :4], cache=cache).logits] + [m(ids[:, t : t + 1], cache=cache).logits for t in range(4, 9)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-8)
    from compressmamba.models.mamba3 import export_mamba_ssm

    with pytest.raises(ValueError, match="balanced cut's state projection"):
        export_mamba_ssm(m, tmp_path / "ssm")
