import pytest
import torch
from compressmamba.kernels import causal_conv1d_fn, causal_conv1d_ref, causal_conv1d_update


@pytest.mark.parametrize("w", [2, 3, 4, 6])
@pytest.mark.parametrize("act", [None, "silu"])
def test_conv_matches_reference_and_grads(w, act):
    g = torch.Generator().manual_seed(w)
    x = torch.randn(2, 5, 13, generator=g, dtype=torch.float64, requires_grad=True)
    wt = torch.randn(5, w, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    out = causal_conv1d_fn(x.float(), wt.float(), b.float(), act)
    ref = causal_conv1d_ref(x, wt, b, act)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    # causality: changing the future leaves the past alone
    x2 = x.detach().clone()
    x2[..., 7:] += 1
    torch.testing.assert_close(causal_conv1d_ref(x2, wt, b, act)[..., :7], ref[..., :7])
    gy = torch.randn_like(ref)
    g1 = torch.autograd.grad((causal_conv1d_fn(x, wt, b, act) * gy).sum(), (x, wt, b))
    g2 = torch.autograd.grad((ref * gy).sum(), (x, wt, b))
    for a, c in zip(g1, g2):
        torch.testing.assert_close(a, c)


def test_update_steps_equal_full_conv():
    x = torch.randn(2, 4, 9, dtype=torch.float64)
    wt, b = torch.randn(4, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    state = torch.zeros(2, 4, 4, dtype=torch.float64)
    outs = [causal_conv1d_update(x[..., t], state, wt, b, "silu") for t in range(9)]
    torch.testing.assert_close(torch.stack(outs, -1), causal_conv1d_ref(x, wt, b, "silu"))


def test_bad_shapes():
    with pytest.raises(ValueError, match="weight has shape"):
        causal_conv1d_fn(torch.randn(1, 3, 5), torch.randn(4, 2))


def test_bad_width_device_activation():
    x = torch.randn(1, 3, 5)
    with pytest.raises(ValueError, match="width 0, expected at least 1"):
        causal_conv1d_fn(x, torch.randn(3, 0))
    with pytest.raises(ValueError, match="different devices"):
        causal_conv1d_fn(x, torch.randn(3, 2, device="meta"))
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d_fn(x, torch.randn(3, 2), activation="relu")
    with pytest.raises(ValueError, match=r"conv_state has shape \(1, 3, 3\), expected \(1, 3, 2\)"):
        causal_conv1d_update(x[..., 0], torch.zeros(1, 3, 3), torch.randn(3, 2))
