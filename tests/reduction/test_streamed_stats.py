"""Issue 34: Mamba2Stats' SSD-form sums (no per-channel state trajectories) against a float64
token-by-token recurrence over every channel, on awkward shapes and chunk lengths."""

import pytest
import torch

from compressmamba.reduction.mamba import MambaStats
from compressmamba.reduction.ssd import Mamba2Stats, _segsum

F64 = torch.float64


def _draw(b, l, h, p, g, n, seed):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=F64)  # noqa: E731
    x, B, C = r(b, l, h, p), r(b, l, g, n), r(b, l, g, n)
    delta = torch.nn.functional.softplus(r(b, l, h) - 1) * 2
    A = -torch.rand(h, generator=gen, dtype=F64) * 3 - 0.05
    return x, delta, A, B, C


def _recurrence(x, delta, A, B, C):
    """Every sum of Mamba2Stats token by token: s_t = a_t s_{t-1} + Δ_t x_t B_tᵀ per head."""
    b, l, h, p = x.shape
    g, n = B.shape[2:]
    out = {"out2": torch.zeros(h, n, dtype=F64), "in2": torch.zeros(h, p, n, dtype=F64)}
    out["dB"], out["ssd_in"] = torch.zeros(h, n, dtype=F64), torch.zeros(h, n, n, dtype=F64)
    for i in range(b):
        s = torch.zeros(h, p, n, dtype=F64)
        for t in range(l):
            for j in range(h):
                k = j * g // h
                bt = delta[i, t, j] * x[i, t, j][:, None] * B[i, t, k][None, :]  # (p, n)
                s[j] = torch.exp(delta[i, t, j] * A[j]) * s[j] + bt
                out["out2"][j] += (C[i, t, k] ** 2 * s[j] ** 2).sum(0)
                out["in2"][j] += bt**2
                out["dB"][j] += delta[i, t, j] * B[i, t, k]
                out["ssd_in"][j] += bt.T @ bt
    out["in2"] = out["in2"].flatten(0, 1)
    out["dB"] = out["dB"].repeat_interleave(p, dim=0)
    return out


@pytest.mark.parametrize("chunk", [1, 4, 7, 50])
def test_mamba2_sums_equal_a_float64_recurrence(chunk):
    h, p, g, n = 6, 3, 3, 5
    batches = [_draw(2, 17, h, p, g, n, seed=0), _draw(1, 9, h, p, g, n, seed=1)]
    s = Mamba2Stats(h, p, g, n, chunk=chunk)
    for batch in batches:
        s.update(*batch)
    got = s.as_dict()
    want = {k: sum(_recurrence(*batch)[k] for batch in batches) for k in ("out2", "in2", "dB", "ssd_in")}
    for k, v in want.items():
        assert v.abs().max() > 0
        torch.testing.assert_close(got[k], v, rtol=1e-10, atol=1e-12 * float(v.abs().max()), msg=k)
    assert float(got["count"]) == 2 * 17 + 9


def test_float32_inputs_work_in_float32_within_float32_round_off():
    h, p, g, n = 4, 8, 2, 16
    batch = _draw(3, 40, h, p, g, n, seed=2)
    s32, s64 = Mamba2Stats(h, p, g, n, chunk=16), Mamba2Stats(h, p, g, n, chunk=16)
    s32.update(*(t.float() for t in batch))
    s64.update(*(t.float().double() for t in batch))
    for k, v in s64.as_dict().items():
        assert s32.as_dict()[k].dtype == F64
        torch.testing.assert_close(s32.as_dict()[k], v, rtol=2e-5, atol=1e-6 * float(v.abs().max()), msg=k)


def test_segsum_is_stable_under_strong_decay():
    a = torch.full((1, 64), -50.0)  # cumsum reaches -3200: differences of a cumsum would lose the digits
    a[0, 10] = -1e-3
    seg = _segsum(a)
    assert seg[0, 10, 9].item() == pytest.approx(-1e-3, rel=1e-6)
    assert seg[0, 5, 5] == 0 and seg[0, 4, 5] == float("-inf")


def test_mamba1_chunk_is_bounded_by_max_elems():
    gen = torch.Generator().manual_seed(0)
    u, delta = torch.randn(2, 6, 30, generator=gen), torch.rand(2, 6, 30, generator=gen)
    A, B, C = -torch.rand(6, 4, generator=gen) - 0.1, torch.randn(2, 4, 30, generator=gen), torch.randn(2, 4, 30)
    one, small = MambaStats(6, 4, chunk=64), MambaStats(6, 4, chunk=64, max_elems=2 * 6 * 4 * 3)  # 3 steps a chunk
    one.update(u, delta, A, B, C)
    small.update(u, delta, A, B, C)
    for k, v in one.as_dict().items():
        torch.testing.assert_close(small.as_dict()[k], v, rtol=1e-5, atol=1e-7, msg=k)
