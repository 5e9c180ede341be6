import pytest
import torch

from compressmamba.reduction.mamba import MambaStats, mamba_energy


def _inputs(b=2, d=5, n=7, l=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, d, l, generator=g)
    delta = torch.nn.functional.softplus(torch.randn(b, d, l, generator=g) - 1)
    A = -torch.exp(torch.randn(d, n, generator=g))
    B, C = torch.randn(b, n, l, generator=g), torch.randn(b, n, l, generator=g)
    return u, delta, A, B, C


def _brute(u, delta, A, B, C):
    """Per-token float64 loop over everything; B, C (b, n, l) or grouped (b, g, n, l)."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    b, d, l = u.shape
    n = A.shape[1]
    g = B.shape[1] if B.dim() == 4 else 1
    grp = [ch * g // d for ch in range(d)]  # group of each channel
    h = torch.zeros(b, d, n, dtype=torch.float64)
    acc = {k: torch.zeros(d, n, dtype=torch.float64) for k in ("decay", "in2", "dB", "out2")}
    acc["c2"], acc["c"] = torch.zeros(g, n, dtype=torch.float64), torch.zeros(g, n, dtype=torch.float64)
    for i in range(b):
        for t in range(l):
            for ch in range(d):
                Bt = B[i, grp[ch], :, t] if g > 1 else B[i, :, t]
                Ct = C[i, grp[ch], :, t] if g > 1 else C[i, :, t]
                a = torch.exp(delta[i, ch, t] * A[ch])
                x = delta[i, ch, t] * u[i, ch, t] * Bt
                h[i, ch] = a * h[i, ch] + x
                acc["decay"][ch] += a
                acc["in2"][ch] += x**2
                acc["dB"][ch] += delta[i, ch, t] * Bt
                acc["out2"][ch] += (Ct * h[i, ch]) ** 2
            Cg = C[i, :, :, t] if g > 1 else C[i, None, :, t]
            acc["c2"] += Cg**2
            acc["c"] += Cg
    if g == 1:
        acc["c2"], acc["c"] = acc["c2"][0], acc["c"][0]
    return {k: v / (b * l) for k, v in acc.items()}


def _impulse_energy(a, b, c):
    """Reference for ``hankel`` / ``hankel_mean``, from the definitions and not the closed form:
    each (channel, state) is a scalar mode h_{k+1} = a h_k + b u_k, y_k = c h_k; its Gramians are
    the sums over its impulse response, P = Σ_k (a^k b)², Q = Σ_k (c a^k)², and its Hankel
    singular value is sqrt(P Q). Returns Σ over channels (n,). a, b, c (d, n) float64."""
    steps = int(40 / -torch.log(a.max()).item()) + 1  # a^(2k) below e^-80 at the end
    powers = a[..., None] ** torch.arange(steps, dtype=torch.float64)  # (d, n, steps)
    P = ((powers * b[..., None]) ** 2).sum(-1)
    Q = ((c[..., None] * powers) ** 2).sum(-1)
    return torch.sqrt(P * Q).sum(0)


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
    # hankel: the mode driven and read by the RMS of its input and output weights;
    # hankel_mean: by their means (the mean system); output: the per-token loop's E[(C h)²]
    a, c2, c = ref["decay"], ref["c2"].expand(5, -1), ref["c"].expand(5, -1)
    e_h = _impulse_energy(a, ref["in2"].sqrt(), c2.sqrt())
    e_m = _impulse_energy(a, ref["dB"], c)
    torch.testing.assert_close(mamba_energy(d, "hankel"), e_h, rtol=1e-5, atol=0)
    torch.testing.assert_close(mamba_energy(d, "hankel_mean"), e_m, rtol=1e-5, atol=0)
    torch.testing.assert_close(mamba_energy(d, "output"), ref["out2"].sum(0), rtol=1e-5, atol=0)


def test_grouped_B_C_match_brute_force():
    """B, C (b, g, n, l): channel block k of d / g channels uses group k."""
    b, d, g, n, l = 2, 6, 3, 5, 23
    u, delta, A, _, _ = _inputs(b=b, d=d, n=n, l=l, seed=4)
    gen = torch.Generator().manual_seed(5)
    B, C = torch.randn(b, g, n, l, generator=gen), torch.randn(b, g, n, l, generator=gen)
    s = MambaStats(d, n, chunk=7)
    s.update(u, delta, A, B, C)
    got = s.as_dict()
    ref = _brute(u, delta, A, B, C)
    for k, v in ref.items():
        torch.testing.assert_close(got[k] / (b * l), v, rtol=1e-5, atol=1e-8, msg=k)
    # channel ch reads its group's C: the group of each channel, from the definition
    grp = torch.tensor([ch * g // d for ch in range(d)])
    c2, c = ref["c2"][grp], ref["c"][grp]
    e_h = _impulse_energy(ref["decay"], ref["in2"].sqrt(), c2.sqrt())
    torch.testing.assert_close(mamba_energy(got, "hankel"), e_h, rtol=1e-5, atol=0)
    e_m = _impulse_energy(ref["decay"], ref["dB"], c)
    torch.testing.assert_close(mamba_energy(got, "hankel_mean"), e_m, rtol=1e-5, atol=0)
    torch.testing.assert_close(mamba_energy(got, "output"), ref["out2"].sum(0), rtol=1e-5, atol=0)
    per_group = mamba_energy(got, "output", groups=g)  # (g, n): each group's channels only
    torch.testing.assert_close(per_group, torch.stack([ref["out2"][grp == k].sum(0) for k in range(g)]))


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
    # float64 work: the sums of two halves equal one pass to round-off (in float32 the per-chunk
    # matmuls differ in their last bits with the batch split)
    u, delta, A, B, C = (t.double() for t in _inputs(b=4))
    whole, h1, h2 = MambaStats(5, 7), MambaStats(5, 7), MambaStats(5, 7)
    whole.update(u, delta, A, B, C)
    h1.update(u[:2], delta[:2], A, B[:2], C[:2])
    h2.update(u[2:], delta[2:], A, B[2:], C[2:])
    summed = {k: h1.as_dict()[k] + h2.as_dict()[k] for k in whole.as_dict()}
    for k, v in whole.as_dict().items():
        torch.testing.assert_close(summed[k], v)
    back = MambaStats.from_dict(summed).as_dict()
    for k, v in summed.items():
        torch.testing.assert_close(back[k], v)
    torch.testing.assert_close(mamba_energy(summed, "output"), mamba_energy(whole.as_dict(), "output"))


def test_bad_update_shapes():
    u, delta, A, B, C = _inputs(b=2, d=5, n=7, l=9)
    s = MambaStats(5, 7)
    with pytest.raises(ValueError, match="u must be"):
        s.update(u[:, :4], delta, A, B, C)
    with pytest.raises(ValueError, match="delta must"):
        s.update(u, delta[..., :-1], A, B, C)
    with pytest.raises(ValueError, match="A must"):
        s.update(u, delta, A[:, :6], B, C)
    with pytest.raises(ValueError, match="C must"):
        s.update(u, delta, A, B, C[..., :-1])
    with pytest.raises(ValueError, match="groups g=2"):
        s.update(u, delta, A, B[:, None].expand(2, 2, 7, 9), C[:, None].expand(2, 2, 7, 9))
    with pytest.raises(ValueError, match="n must be a positive int"):
        MambaStats(5, 0)
    with pytest.raises(ValueError, match="sums lack"):
        MambaStats.from_dict({"decay": torch.ones(5, 7)})


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
