"""Kernels on empty inputs (L = 0, batch = 0, dim = 0) and a Triton request on the CPU in words."""

import pytest
import torch
from compressmamba.kernels.conv1d import causal_conv1d_fn

from compressmamba.kernels import selective_scan_fn, selective_state_update


def _scan_inputs(b, d, L, n=5, groups=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(b * 100 + d * 10 + L)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype).requires_grad_()  # noqa: E731
    bc = (b, groups, n, L) if groups else (b, n, L)
    A = (-torch.rand(d, n, generator=g) - 0.1).requires_grad_()
    return dict(u=r(b, d, L), delta=r(b, d, L), A=A, B=r(*bc), C=r(*bc), D=r(d), z=r(b, d, L), delta_bias=r(d))


@pytest.mark.parametrize("backend", ["auto", "cpu", "ref"])
@pytest.mark.parametrize("shape", [(2, 6, 0), (0, 6, 9), (2, 0, 9), (0, 0, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_scan_on_empty_inputs_returns_empty_outputs_and_zero_gradients(backend, shape, dtype):
    b, d, L = shape
    x = _scan_inputs(b, d, L, dtype=dtype)
    y, last = selective_scan_fn(**x, delta_softplus=True, return_last_state=True, backend=backend)
    assert y.shape == (b, d, L) and y.dtype == dtype
    assert last.shape == (b, d, 5) and last.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert (last == 0).all()  # no step taken: the initial (zero) state
    (y.float().sum() + last.sum()).backward()
    for k, t in x.items():
        assert t.grad is not None and t.grad.shape == t.shape and (t.grad == 0).all(), k


def test_grouped_scan_with_zero_length():
    x = _scan_inputs(2, 6, 0, groups=2)
    assert selective_scan_fn(**x).shape == (2, 6, 0)


@pytest.mark.parametrize("backend", ["auto", "torch", "ref"])
@pytest.mark.parametrize("shape", [(2, 6, 0), (0, 6, 9), (2, 0, 9)])
def test_conv1d_on_empty_inputs_returns_empty_outputs(backend, shape):
    b, d, L = shape
    x = torch.randn(b, d, L, requires_grad=True)
    w = torch.randn(d, 4, requires_grad=True)
    y = causal_conv1d_fn(x, w, torch.randn(d), activation="silu", backend=backend)
    assert y.shape == (b, d, L)
    y.sum().backward()
    assert x.grad.shape == x.shape and w.grad.shape == w.shape and (w.grad == 0).all()


def test_empty_scan_matches_the_reference_on_the_non_empty_neighbour():
    """The empty path must not leak into real shapes: L = 1 still goes through the kernel."""
    x = {k: v.detach() for k, v in _scan_inputs(2, 6, 1, dtype=torch.float64).items()}
    y = selective_scan_fn(**x, backend="cpu")
    torch.testing.assert_close(y, selective_scan_fn(**x, backend="ref"))
    assert y.abs().sum() > 0


def test_triton_on_cpu_tensors_without_the_interpreter_says_so(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = {k: v.detach() for k, v in _scan_inputs(1, 4, 3).items()}
    with pytest.raises(ValueError, match=r"backend='triton' got tensors on cpu.*CUDA.*TRITON_INTERPRET=1"):
        selective_scan_fn(**x, backend="triton")
    state = torch.zeros(1, 4, 5)
    with pytest.raises(ValueError, match=r"selective_state_update: backend='triton' got tensors on cpu"):
        selective_state_update(
            state, x["u"][..., 0], x["delta"][..., 0], x["A"], x["B"][..., 0], x["C"][..., 0], backend="triton"
        )
    with pytest.raises(ValueError, match=r"causal_conv1d_fn: backend='triton' got tensors on cpu"):
        causal_conv1d_fn(torch.randn(1, 4, 3), torch.randn(4, 4), backend="triton")


def test_ssd_triton_on_cpu_tensors_without_the_interpreter_says_so(monkeypatch):
    from compressmamba.kernels import ssd_scan_fn, ssd_state_update

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    b, l, h, p, g, n = 1, 5, 2, 3, 1, 4
    x, dt = torch.randn(b, l, h, p), torch.rand(b, l, h)
    A, B, C = -torch.rand(h), torch.randn(b, l, g, n), torch.randn(b, l, g, n)
    with pytest.raises(ValueError, match=r"ssd_scan_fn: backend='triton' got tensors on cpu.*TRITON_INTERPRET=1"):
        ssd_scan_fn(x, dt, A, B, C, backend="triton")
    with pytest.raises(ValueError, match=r"ssd_state_update: backend='triton' got tensors on cpu"):
        ssd_state_update(torch.zeros(b, h, p, n), x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], backend="triton")


class _FakeCuda:
    """Stands for a CUDA tensor in backend selection (which reads only ``is_cuda``)."""

    is_cuda = True


@pytest.mark.parametrize(
    "module",
    ["compressmamba.kernels.selective_scan.scan", "compressmamba.kernels.ssd.scan"],
)
def test_auto_falls_back_to_cpu_above_the_triton_state_size(module):
    from compressmamba.kernels.backend_checks import pick_backend
    from compressmamba.kernels.limits import MAX_N

    backends = ("auto", "triton", "cpu")
    assert pick_backend("auto", backends, _FakeCuda(), "op", module, state_size=MAX_N) == "triton"
    assert pick_backend("auto", backends, _FakeCuda(), "op", module, state_size=MAX_N + 1) == "cpu"
    assert pick_backend("auto", backends, torch.zeros(1), "op", module, state_size=3) == "cpu"


def test_each_kernel_limit_is_written_once():
    """TRITON_INTERPRET is read, and MAX_N defined, only in compressmamba/kernels/limits.py."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    files = [*root.glob("compressmamba/**/*.py"), *root.glob("kernels/**/*.py")]
    assert len(files) > 20
    reads = [f for f in files if re.search(r"environ(\.get)?\W+[\"']TRITON_INTERPRET", f.read_text())]
    limits = [f for f in files if re.search(r"^MAX_N\s*=", f.read_text(), re.M)]
    assert [f.name for f in reads] == ["limits.py"] and [f.name for f in limits] == ["limits.py"], (reads, limits)
