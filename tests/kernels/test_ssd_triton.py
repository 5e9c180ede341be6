"""Triton SSD (Mamba-2) scan vs the float64 reference, under TRITON_INTERPRET=1 on CPU (small
shapes) and on CUDA when a GPU is present (longer sequences, marked gpu): outputs, final state
and every gradient, with every buffer the launchers allocate poisoned with NaN."""

import pytest
import torch
from compressmamba.kernels.ssd.scan import MAX_N, ssd_scan_triton

from compressmamba.kernels import ssd_scan_fn, ssd_scan_ref

from scan_utils import TRITON_DEVICE, rel_err
from ssd_utils import make_ssd_inputs, run_ssd, ssd_reference

FP32_FWD, FP32_GRAD = 1e-5, 1e-4  # float32 inputs against float64
LOW_PREC = 2e-2  # bf16/fp16 inputs (rounded once, then the same inputs in float64)

# every buffer the launchers allocate starts as NaN (tests/kernels/conftest.py)
pytestmark = pytest.mark.usefixtures("poison_empty")

ALL_OFF = dict(d_shape=None, has_z=False, has_bias=False, has_init=False, softplus=False, final=False)
# (l, chunk, batch, h, g, p, n, flags). The interpreter is slow: N = 13, 47 (masked), 64, 128
# and 200 each once, L never a multiple of the chunk but once, every optional input on and off somewhere.
CASES = [
    (63, 16, 2, 6, 3, 8, 13, dict(d_shape="head", softplus=True, final=True)),
    (100, 32, 1, 6, 2, 12, 47, dict(d_shape="channel", has_z=False, has_init=False, softplus=False, final=True)),
    (48, 16, 1, 4, 1, 16, 64, dict(d_shape=None, has_bias=False, softplus=True, final=False)),
    (37, 32, 1, 2, 2, 8, 128, dict(d_shape="channel", has_init=True, softplus=True, final=True)),
    (5, 16, 2, 2, 1, 3, 1, dict(ALL_OFF, d_shape="head")),
    # n = 200: the backward walks the states in 13 blocks of 16, the last one masked
    (21, 16, 1, 2, 1, 5, 200, dict(d_shape="head", has_init=True, softplus=True, final=True)),
]


def _check(l, chunk, b, h, g, p, n, flags, device=TRITON_DEVICE, seed=0):
    flags = dict(flags)
    softplus, final = flags.pop("softplus"), flags.pop("final")
    inp = make_ssd_inputs(b, l, h, p, g, n, **flags, softplus=softplus, seed=seed, device=device)
    y, hT, grads = run_ssd(ssd_scan_triton, inp, softplus, final, chunk_size=chunk)
    y64, h64, g64 = ssd_reference(inp, softplus, final)
    assert y.shape == y64.shape and y.dtype == torch.float32 and rel_err(y, y64) < FP32_FWD
    if final:
        assert hT.shape == (b, h, p, n) and hT.dtype == torch.float32 and rel_err(hT, h64) < FP32_FWD
    assert set(grads) == set(g64)
    for k in g64:
        assert grads[k].shape == inp[k].shape and rel_err(grads[k], g64[k]) < FP32_GRAD, k


@pytest.mark.parametrize("l,chunk,b,h,g,p,n,flags", CASES)
def test_triton_ssd_matches_float64_reference(l, chunk, b, h, g, p, n, flags):
    _check(l, chunk, b, h, g, p, n, flags, seed=l + n)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_low_precision_and_dispatch_by_name(dtype):
    inp = make_ssd_inputs(1, 20, 4, 4, 2, 5, d_shape="channel", dtype=dtype, seed=9, device=TRITON_DEVICE)
    y, hT, g = run_ssd(lambda **kw: ssd_scan_fn(**kw, backend="triton"), inp, True, True)
    y64, h64, g64 = ssd_reference(inp, True, True)
    assert y.dtype == dtype and hT.dtype == torch.float32
    assert rel_err(y, y64) < LOW_PREC and rel_err(hT, h64) < LOW_PREC
    for k in g64:
        assert g[k].dtype == inp[k].dtype and rel_err(g[k], g64[k]) < LOW_PREC, k


def test_chunk_size_does_not_change_the_result():
    inp = make_ssd_inputs(1, 37, 2, 3, 1, 5, seed=3, device=TRITON_DEVICE)
    y1, h1, g1 = run_ssd(ssd_scan_triton, inp, True, True, chunk_size=16)
    y2, h2, g2 = run_ssd(ssd_scan_triton, inp, True, True, chunk_size=64)
    assert rel_err(y1, y2) < 1e-6 and rel_err(h1, h2) < 1e-6
    assert all(rel_err(g1[k], g2[k]) < 1e-5 for k in g1)


def test_only_y_or_only_the_final_state_carries_gradient():
    """Autograd hands the kernel None for an output that the loss does not use."""
    inp = make_ssd_inputs(1, 21, 2, 3, 1, 5, seed=8, device=TRITON_DEVICE)
    names = [k for k, v in inp.items() if v is not None]
    inp64 = {k: v.detach().double().requires_grad_() if v is not None else None for k, v in inp.items()}
    for pick in (0, 1):
        out = ssd_scan_triton(**inp, chunk_size=16, dt_softplus=True, return_final_states=True)[pick]
        out64 = ssd_scan_ref(**inp64, dt_softplus=True, return_final_states=True)[pick]
        grads = torch.autograd.grad(out.square().sum(), [inp[k] for k in names], allow_unused=True)
        grads64 = torch.autograd.grad(out64.square().sum(), [inp64[k] for k in names], allow_unused=True)
        for k, a, c in zip(names, grads, grads64):
            if c is None or not c.any():  # e.g. D and z do not reach the final state
                assert a is None or not a.any(), k
            else:
                assert rel_err(a, c) < FP32_GRAD, (pick, k)


def test_inference_forward_same_result():
    inp = make_ssd_inputs(1, 40, 2, 4, 2, 13, seed=6, device=TRITON_DEVICE)
    y, h = ssd_scan_triton(**inp, chunk_size=16, dt_softplus=True, return_final_states=True)
    with torch.no_grad():
        y0, h0 = ssd_scan_triton(**inp, chunk_size=16, dt_softplus=True, return_final_states=True)
    assert torch.equal(y.detach(), y0) and torch.equal(h.detach(), h0)


def test_bad_input_is_refused():
    inp = make_ssd_inputs(1, 3, 2, 2, 1, MAX_N + 1)
    with pytest.raises(ValueError, match="d_state 257 exceeds the Triton kernels. range 1..256"):
        ssd_scan_triton(**inp)
    inp = make_ssd_inputs(1, 3, 2, 2, 1, 4)
    with pytest.raises(ValueError, match="chunk_size must be a power of two in 16..128 for the Triton kernels, got 24"):
        ssd_scan_triton(**inp, chunk_size=24)
    b, l, h, p, n = 1, 2**15, 2**8, 2**8, 2
    big = dict(x=torch.empty(b, l, h, p, device="meta"), dt=torch.empty(b, l, h, device="meta"))
    big.update(A=torch.empty(h, device="meta"), B=torch.empty(b, l, 1, n, device="meta"))
    with pytest.raises(ValueError, match="x would hold 2147483648 elements"):
        ssd_scan_triton(**big, C=big["B"])


def test_strided_views_as_a_mamba2_mixer_makes_them():
    """x, B, C read through their own strides: slices of one (b, l, h·p + 2·g·n) conv output."""
    b, l, h, p, g, n = 2, 33, 4, 8, 2, 13
    gen = torch.Generator().manual_seed(21)
    xBC = torch.randn(b, l, h * p + 2 * g * n, generator=gen).to(TRITON_DEVICE).requires_grad_()
    x = xBC[..., : h * p].view(b, l, h, p)
    B = xBC[..., h * p : h * p + g * n].view(b, l, g, n)
    C = xBC[..., h * p + g * n :].view(b, l, g, n)
    assert not x.is_contiguous() and not B.is_contiguous()
    dt = torch.randn(b, l, h, generator=gen).to(TRITON_DEVICE)
    A = -torch.rand(h, generator=gen).to(TRITON_DEVICE) - 0.5
    y = ssd_scan_triton(x, dt, A, B, C, 16, dt_softplus=True)
    xBC64 = xBC.detach().double().requires_grad_()
    x64 = xBC64[..., : h * p].view(b, l, h, p)
    B64, C64 = xBC64[..., h * p : h * p + g * n].view(b, l, g, n), xBC64[..., h * p + g * n :].view(b, l, g, n)
    y64 = ssd_scan_ref(x64, dt.double(), A.double(), B64, C64, dt_softplus=True)
    assert rel_err(y, y64) < FP32_FWD
    gy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    (g32,) = torch.autograd.grad((y * gy.to(y)).sum(), [xBC])
    (g64,) = torch.autograd.grad((y64 * gy).sum(), [xBC64])
    assert rel_err(g32, g64) < FP32_GRAD


@pytest.mark.gpu
@pytest.mark.parametrize("n", [13, 16, 47, 64, 128])
def test_triton_ssd_on_gpu_long_sequences(n):
    flags = dict(d_shape="channel", softplus=True, final=True)
    _check(1000, 64, 2, 8, 2, 64, n, flags, device="cuda", seed=n)
