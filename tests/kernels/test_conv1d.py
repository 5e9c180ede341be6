import pytest
import torch

from compressmamba.kernels import causal_conv1d_fn, causal_conv1d_ref, causal_conv1d_update

from scan_utils import TRITON_DEVICE, rel_err


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


# --- the Triton kernel, under TRITON_INTERPRET=1 on CPU (and natively on a GPU) ---------------
# shapes straddle the kernel's 16-channel / 64-step tiles; x is a strided slice as in Mamba,
# where x and z are halves of the transposed in_proj output.
TRITON_CASES = [
    (1, 2, 5, 1, True, "silu"),
    (2, 1, 19, 130, False, None),
    (3, 2, 16, 7, True, None),
    (4, 2, 19, 130, True, "silu"),
    (4, 1, 3, 300, False, "silu"),
    (8, 1, 5, 9, True, "silu"),
]


def _strided_x(b, d, l, g, dtype):
    """(b, d, l) view of a (b, l, 2d) tensor: stride 1 along no axis of interest (non-contiguous)."""
    xz = torch.randn(b, l, 2 * d, generator=g, dtype=torch.float64).to(TRITON_DEVICE, dtype)
    return xz.transpose(1, 2)[:, :d]


@pytest.mark.usefixtures("poison_empty")
@pytest.mark.parametrize("w,b,d,l,has_bias,act", TRITON_CASES)
def test_triton_conv_matches_float64_reference(w, b, d, l, has_bias, act):
    g = torch.Generator().manual_seed(100 * w + l)
    x = _strided_x(b, d, l, g, torch.float32).requires_grad_()
    assert not x.is_contiguous()
    wt = torch.randn(d, w, generator=g).to(TRITON_DEVICE).requires_grad_()
    bias = torch.randn(d, generator=g).to(TRITON_DEVICE).requires_grad_() if has_bias else None
    leaves = [t for t in (x, wt, bias) if t is not None]
    out = causal_conv1d_fn(x, wt, bias, act, backend="triton")
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    ref = causal_conv1d_ref(leaves64[0], leaves64[1], leaves64[2] if has_bias else None, act)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert rel_err(out, ref) < 1e-5
    gy = torch.randn(ref.shape, generator=g, dtype=torch.float64).to(TRITON_DEVICE)
    grads = torch.autograd.grad((out * gy.float()).sum(), leaves)
    grads64 = torch.autograd.grad((ref * gy).sum(), leaves64)
    for name, a, c in zip(("x", "weight", "bias"), grads, grads64):
        assert a.shape == c.shape and rel_err(a, c) < 1e-4, name


@pytest.mark.usefixtures("poison_empty")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_conv_low_precision(dtype):
    g = torch.Generator().manual_seed(7)
    x = _strided_x(2, 19, 130, g, dtype).requires_grad_()
    wt = torch.randn(19, 4, generator=g).to(TRITON_DEVICE, dtype).requires_grad_()
    bias = torch.randn(19, generator=g).to(TRITON_DEVICE, dtype).requires_grad_()
    out = causal_conv1d_fn(x, wt, bias, "silu", backend="triton")
    assert out.dtype == dtype
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, wt, bias))
    ref = causal_conv1d_ref(x64, w64, b64, "silu")
    assert rel_err(out, ref) < 1e-2
    gy = torch.randn(ref.shape, generator=g, dtype=torch.float64).to(TRITON_DEVICE)
    grads = torch.autograd.grad((out * gy.to(dtype)).sum(), (x, wt, bias))
    grads64 = torch.autograd.grad((ref * gy).sum(), (x64, w64, b64))
    for a, c in zip(grads, grads64):
        assert a.dtype == dtype and rel_err(a, c) < 1e-2


def test_conv_backends_and_errors():
    x = torch.randn(2, 3, 11)
    wt, bias = torch.randn(3, 4), torch.randn(3)
    ref = causal_conv1d_ref(x, wt, bias, "silu")
    for backend in ("auto", "torch", "ref"):  # CPU tensors: auto runs torch
        torch.testing.assert_close(causal_conv1d_fn(x, wt, bias, "silu", backend=backend), ref)
    with pytest.raises(ValueError, match="backend must be one of"):
        causal_conv1d_fn(x, wt, backend="cuda")
    with pytest.raises(ValueError, match=r"width 9, the Triton kernel supports 1\.\.8"):
        causal_conv1d_fn(x, torch.randn(3, 9), backend="triton")
    with pytest.raises(ValueError, match="causal-conv1d package"):  # never installed in CI
        causal_conv1d_fn(x, wt, backend="causal_conv1d")
    big = torch.empty(1, 2**16, 2**15, device="meta")  # 2^31 elements: beyond 32-bit offsets
    with pytest.raises(ValueError, match="x would hold 2147483648 elements"):
        causal_conv1d_fn(big, torch.empty(2**16, 4, device="meta"), backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("w", [2, 3, 4])
def test_triton_conv_gpu_mamba_shape(w):
    g = torch.Generator().manual_seed(w)
    x = _strided_x(4, 1536, 2048, g, torch.float32).requires_grad_()
    wt = torch.randn(1536, w, generator=g).cuda().requires_grad_()
    bias = torch.randn(1536, generator=g).cuda().requires_grad_()
    out = causal_conv1d_fn(x, wt, bias, "silu", backend="triton")
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, wt, bias))
    ref = causal_conv1d_ref(x64, w64, b64, "silu")
    assert rel_err(out, ref) < 1e-5
    gy = torch.randn_like(ref)
    grads = torch.autograd.grad((out * gy.float()).sum(), (x, wt, bias))
    for a, c in zip(grads, torch.autograd.grad((ref * gy).sum(), (x64, w64, b64))):
        assert rel_err(a, c) < 1e-4
