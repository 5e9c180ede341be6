import pytest
import torch

from compressmamba.reduction.mamba import MambaStats, mamba_energy, per_channel_hsv


def _inputs(b=2, d=5, n=7, l=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, d, l, generator=g)
    delta = torch.nn.functional.softplus(torch.randn(b, d, l, generator=g) - 1)
    A = -torch.exp(torch.randn(d, n, generator=g))
    B, C = torch.randn(b, n, l, generator=g), torch.randn(b, n, l, generator=g)
    return u, delta, A, B, C


def _brute(u, delta, A, B, C):
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    b, d, l = u.shape
    n = A.shape[1]
    h = torch.zeros(b, d, n, dtype=torch.float64)
    acc = {k: 0 for k in ("decay", "in2", "c2", "dB", "c", "out2")}
    for t in range(l):
        a = torch.exp(delta[:, :, t, None] * A)
        x = (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        h = a * h + x
        acc["decay"] += a.sum(0)
        acc["in2"] += (x**2).sum(0)
        acc["c2"] += (C[:, :, t] ** 2).sum(0)
        acc["dB"] += (delta[:, :, t, None] * B[:, None, :, t]).sum(0)
        acc["c"] += C[:, :, t].sum(0)
        acc["out2"] += ((C[:, None, :, t] * h) ** 2).sum(0)
    return {k: v / (b * l) for k, v in acc.items()}


def test_sums_match_brute_force_float64_and_energies():
    u, delta, A, B, C = _inputs()
    s = MambaStats(5, 7, chunk=8)  # several chunks: the state is carried between them
    s.update(u, delta, A, B, C)
    d = s.as_dict()
    ref = _brute(u, delta, A, B, C)
    cnt = d["count"].item()
    assert cnt == 2 * 37
    for k, v in ref.items():
        torch.testing.assert_close(d[k] / cnt, v, rtol=1e-5, atol=1e-8, msg=k)
    den = 1 - ref["decay"] ** 2
    e_h = torch.sqrt(ref["in2"] / den * ref["c2"][None] / den).sum(0)
    e_m = torch.sqrt((ref["dB"] ** 2 / den) * (ref["c"][None] ** 2 / den)).sum(0)
    torch.testing.assert_close(mamba_energy(d, "hankel"), e_h, rtol=1e-5, atol=0)
    torch.testing.assert_close(mamba_energy(d, "hankel_mean"), e_m, rtol=1e-5, atol=0)
    torch.testing.assert_close(mamba_energy(d, "output"), ref["out2"].sum(0), rtol=1e-5, atol=0)


def test_output_energy_is_the_removed_contribution():
    """Zeroing state n changes the scan output by exactly Σ_d C[n] h[d, n]: its energy matches."""
    from compressmamba.kernels import selective_scan_ref

    u, delta, A, B, C = (t.double() for t in _inputs(b=1, d=3, n=4, l=20, seed=2))
    s = MambaStats(3, 4)
    s.update(u, delta, A, B, C)
    e = mamba_energy(s.as_dict(), "output")
    y = selective_scan_ref(u, delta, A, B, C)
    for n in range(4):
        B0 = B.clone()
        B0[:, n] = 0
        diff = y - selective_scan_ref(u, delta, A, B0, C)
        torch.testing.assert_close(e[n], (diff**2).sum() / 20, rtol=1e-5, atol=0)


def test_two_halves_sum_to_one_pass():
    u, delta, A, B, C = _inputs(b=4)
    whole, h1, h2 = MambaStats(5, 7), MambaStats(5, 7), MambaStats(5, 7)
    whole.update(u, delta, A, B, C)
    h1.update(u[:2], delta[:2], A, B[:2], C[:2])
    h2.update(u[2:], delta[2:], A, B[2:], C[2:])
    summed = {k: h1.as_dict()[k] + h2.as_dict()[k] for k in whole.as_dict()}
    for k, v in whole.as_dict().items():
        torch.testing.assert_close(summed[k], v)
    torch.testing.assert_close(MambaStats.from_dict(summed).as_dict()["out2"], v if k == "out2" else summed["out2"])


def test_bad_stats():
    u, delta, A, B, C = _inputs(b=1, l=5)
    s = MambaStats(5, 7)
    s.update(u, delta, A, B, C)
    with pytest.raises(ValueError, match="calibration saw 5 tokens"):
        mamba_energy(s.as_dict(), "hankel")
    s.update(*_inputs(b=2))
    d = s.as_dict()
    d["in2"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        mamba_energy(d, "hankel")
    with pytest.raises(ValueError, match="selection modes"):
        mamba_energy(s.as_dict(), "random")
    hsv = per_channel_hsv(s.as_dict())
    assert hsv.shape == (5, 7) and (hsv[:, :-1] >= hsv[:, 1:]).all()
