"""Triton selective scan vs the float64 reference, under TRITON_INTERPRET=1 on CPU (tiny shapes)
and on CUDA when a GPU is present (larger shapes, marked gpu)."""

import pytest
import torch
import triton
from compressmamba.kernels.selective_scan.scan import (
    MAX_N,
    MAX_TILE,
    _configs,
    _prune,
    block_d,
    fixed_warps,
    selective_scan_triton,
)

from compressmamba.kernels import selective_scan_fn, selective_scan_ref

from scan_utils import TRITON_DEVICE, make_inputs, reference, rel_err, run

# (N, L, batch, dim, flags). The interpreter is slow: every N and L appears and every flag is on
# and off somewhere, not the full cross-product. chunk=16 so L=63/64/300 span several chunks.
F0 = dict(has_d=False, has_z=False, has_bias=False, softplus=False, last=False, groups=None)
CASES = [
    (1, 7, 2, 4, F0),
    (3, 64, 2, 6, dict(F0, has_d=True, has_bias=True, softplus=True, last=True)),
    (13, 300, 1, 4, dict(F0, has_d=True, has_z=True, has_bias=True, softplus=True, last=True)),
    (16, 1, 2, 4, dict(F0, has_z=True, softplus=True, last=True, groups=2)),
    (47, 63, 1, 6, dict(F0, has_d=True, has_z=True, groups=3)),
    (64, 7, 2, 4, dict(F0, has_d=True, has_z=True, has_bias=True, softplus=True, last=True)),
]
FP32_FWD, FP32_GRAD = 1e-5, 1e-4  # float32 inputs against float64
LOW_PREC = 1e-2  # bf16/fp16 inputs (rounded once, then the same inputs in float64)


# every buffer the launchers allocate starts as NaN (tests/kernels/conftest.py): an element a
# kernel skips fails the comparison
pytestmark = pytest.mark.usefixtures("poison_empty")


def _check(n, l, b, d, flags, chunk, device=TRITON_DEVICE, seed=0):
    flags = dict(flags)
    softplus, last, groups = flags.pop("softplus"), flags.pop("last"), flags.pop("groups")
    inp = make_inputs(b, d, n, l, groups=groups, **flags, seed=seed)
    inp = {k: (v.detach().to(device).requires_grad_() if v is not None else None) for k, v in inp.items()}
    y, h, grads = run(selective_scan_triton, inp, softplus, last, chunk=chunk)
    y64, h64, g64 = reference(inp, softplus, last)
    assert y.shape == y64.shape and rel_err(y, y64) < FP32_FWD
    if last:
        assert h.shape == (b, d, n) and h.dtype == torch.float32 and rel_err(h, h64) < FP32_FWD
    assert set(grads) == set(g64)
    for k in g64:
        assert grads[k].shape == inp[k].shape and rel_err(grads[k], g64[k]) < FP32_GRAD, k


@pytest.mark.parametrize("n,l,b,d,flags", CASES)
def test_triton_scan_matches_float64_reference(n, l, b, d, flags):
    _check(n, l, b, d, flags, chunk=16, seed=n * 7 + l)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_low_precision_and_dispatch_by_name(dtype):
    inp = make_inputs(1, 4, 5, 20, groups=2, dtype=dtype, seed=9, device=TRITON_DEVICE)
    y, h, g = run(lambda **kw: selective_scan_fn(**kw, backend="triton"), inp, True, True)
    y64, h64, g64 = reference(inp, True, True)
    assert y.dtype == dtype and h.dtype == torch.float32
    assert rel_err(y, y64) < LOW_PREC and rel_err(h, h64) < LOW_PREC
    for k in g64:
        assert g[k].dtype == inp[k].dtype and rel_err(g[k], g64[k]) < LOW_PREC, k


def test_chunk_size_does_not_change_the_result():
    inp = make_inputs(1, 2, 5, 37, seed=3, device=TRITON_DEVICE)
    y1, h1, g1 = run(selective_scan_triton, inp, True, True, chunk=37)
    y2, h2, g2 = run(selective_scan_triton, inp, True, True, chunk=5)
    assert rel_err(y1, y2) < 1e-6 and rel_err(h1, h2) < 1e-6
    assert all(rel_err(g1[k], g2[k]) < 1e-6 for k in g1)


def test_bad_input_is_refused():
    inp = make_inputs(1, 2, MAX_N + 1, 3)
    with pytest.raises(ValueError, match="d_state 257"):
        selective_scan_triton(**inp)
    inp = make_inputs(1, 2, 3, 3)
    with pytest.raises(ValueError, match="chunk must be a positive int, got 0"):
        selective_scan_triton(**inp, chunk=0)
    # 2^31 elements would overflow the kernels' 32-bit offsets: refused before any launch
    big = dict(u=torch.empty(1, 2**16, 2**15, device="meta"), A=torch.empty(2**16, 4, device="meta"))
    big.update(delta=big["u"], B=torch.empty(1, 4, 2**15, device="meta"), C=torch.empty(1, 4, 2**15, device="meta"))
    with pytest.raises(ValueError, match="u would hold 2147483648 elements.*split the batch"):
        selective_scan_triton(**big)


def test_block_and_config_choice():
    """Blocks never span a group and keep the tile within MAX_TILE; pruning keeps at least one
    config and gives each thread 2-16 tile elements wherever the tile allows it."""
    for n in (1, 13, 16, 100, 128, 256):
        for cpg in (1, 3, 8, 48, 64, 1536):
            bd = block_d(n, cpg)
            assert cpg % bd == 0 and bd * triton.next_power_of_2(n) <= max(MAX_TILE, triton.next_power_of_2(n))
            kept = _prune(_configs(), {"chans_per_group": cpg}, BLOCK_N=triton.next_power_of_2(n))
            assert kept
            for c in kept:
                tile = c.kwargs["BLOCK_D"] * triton.next_power_of_2(n)
                assert cpg % c.kwargs["BLOCK_D"] == 0 and tile <= max(MAX_TILE, triton.next_power_of_2(n))
                assert len(kept) == 1 or 2 <= tile / (32 * c.num_warps) <= 16
    as_pairs = lambda cs: sorted((c.kwargs["BLOCK_D"], c.num_warps) for c in cs)  # noqa: E731
    n16 = [(4, 1), (8, 1), (8, 2), (16, 1), (16, 2), (16, 4), (32, 1), (32, 2), (32, 4), (32, 8)]
    assert as_pairs(_prune(_configs(), {"chans_per_group": 1536}, BLOCK_N=16)) == n16
    assert as_pairs(_prune(_configs(), {"chans_per_group": 3}, BLOCK_N=1)) == [(1, 1)]  # fallback
    assert as_pairs(_prune(_configs(), {"chans_per_group": 6}, BLOCK_N=64)) == [(1, 1), (2, 1), (2, 2)]
    # the launcher's own choice: 2 channels at N = 256 (4 x 256 spills with Triton 3.6), a warp
    # per 32 tile elements
    assert block_d(256, 1536) == 2 and block_d(128, 1536) == 8 and block_d(8, 1536) == 32
    assert fixed_warps(32, 8) == 8 and fixed_warps(32, 4) == 4 and fixed_warps(1, 1) == 2


def test_deterministic_mode_sums_partials_in_order():
    """With torch.use_deterministic_algorithms(True) dB and dC come from per-block partials
    instead of atomics: same values, bitwise repeatable."""
    inp = make_inputs(2, 8, 13, 21, groups=2, seed=4, device=TRITON_DEVICE)
    _, _, g_atomic = run(selective_scan_triton, inp, True, False, chunk=8)
    torch.use_deterministic_algorithms(True)
    try:
        _, _, g1 = run(selective_scan_triton, inp, True, False, chunk=8)
        _, _, g2 = run(selective_scan_triton, inp, True, False, chunk=8)
    finally:
        torch.use_deterministic_algorithms(False)
    _, _, g64 = reference(inp, True, False)
    for k in g64:
        assert torch.equal(g1[k], g2[k]) and rel_err(g1[k], g64[k]) < FP32_GRAD, k
        assert rel_err(g1[k], g_atomic[k]) < 1e-6, k


def test_inference_forward_skips_checkpoints_same_result():
    """Without autograd the forward writes no chunk states; y and the last state are unchanged."""
    inp = make_inputs(1, 4, 13, 40, seed=6, device=TRITON_DEVICE)
    y, h = selective_scan_triton(**inp, delta_softplus=True, return_last_state=True, chunk=8)
    with torch.no_grad():
        y0, h0 = selective_scan_triton(**inp, delta_softplus=True, return_last_state=True, chunk=8)
    assert torch.equal(y.detach(), y0) and torch.equal(h.detach(), h0)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 13, 16, 100, 128])
def test_triton_scan_on_gpu_long_sequences(n):
    flags = dict(F0, has_d=True, has_z=True, has_bias=True, softplus=True, last=True, groups=2)
    _check(n, 1000, 2, 96, flags, chunk=64, device="cuda", seed=n)


def test_autotuned_launch_path(monkeypatch):
    """The GPU launch path (the autotuner picks BLOCK_D; the grid follows it) with a single
    config, which the interpreter can run: a block size the launcher would not pick itself."""
    from compressmamba.kernels.selective_scan import scan

    one = lambda **kw: triton.autotune([triton.Config({"BLOCK_D": 2}, num_warps=1)], key=["BLOCK_N", "d"], **kw)  # noqa: E731
    monkeypatch.setattr(scan, "_INTERPRET", False)
    monkeypatch.setattr(scan, "AUTOTUNE", True)  # whatever COMPRESSMAMBA_AUTOTUNE says
    monkeypatch.setattr(scan, "_fwd_tuned", one()(scan._fwd_kernel))
    monkeypatch.setattr(scan, "_bwd_tuned", one(reset_to_zero=["dB_ptr", "dC_ptr"])(scan._bwd_kernel))
    flags = dict(F0, has_d=True, has_z=True, has_bias=True, softplus=True, last=True, groups=2)
    _check(5, 19, 2, 8, flags, chunk=8, seed=11)
    assert scan._fwd_tuned.best_config.kwargs["BLOCK_D"] == 2


class _NoAutotuner:
    def __getitem__(self, grid):
        raise AssertionError("the autotuner ran although COMPRESSMAMBA_AUTOTUNE=0")


def test_autotune_off_launches_the_fixed_block(monkeypatch):
    """COMPRESSMAMBA_AUTOTUNE=0 (scan.AUTOTUNE False; eval/gpu_session.sh sets it): the GPU launch
    path runs the launcher's own block and warps, those the compile report checks, and never the
    autotuner."""
    from compressmamba.kernels.selective_scan import scan

    monkeypatch.setattr(scan, "_INTERPRET", False)
    monkeypatch.setattr(scan, "AUTOTUNE", False)
    monkeypatch.setattr(scan, "_fwd_tuned", _NoAutotuner())
    monkeypatch.setattr(scan, "_bwd_tuned", _NoAutotuner())
    flags = dict(F0, has_d=True, has_z=True, has_bias=True, softplus=True, last=True, groups=2)
    _check(5, 19, 2, 8, flags, chunk=8, seed=12)


def test_strided_views_as_mamba_makes_them():
    """u, delta and z read through their own strides, no copies: z is the second half of the
    transposed in_proj output, delta a transposed projection, u a channel slice."""
    b, d, n, l = 2, 6, 13, 37
    g = torch.Generator().manual_seed(21)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    xz_t = r(b, l, 3 * d).to(TRITON_DEVICE, torch.float32).requires_grad_()
    xz = xz_t.transpose(1, 2)  # (b, 3d, l), strides (3dl, 1, 3d)
    leaves = {
        "u": xz[:, :d],
        "delta": (0.5 * r(b, l, d)).to(TRITON_DEVICE, torch.float32).transpose(1, 2),
        "A": -torch.exp(0.5 * r(d, n)).to(TRITON_DEVICE, torch.float32),
        "B": r(b, n, l).to(TRITON_DEVICE, torch.float32),
        "C": r(b, n, l).to(TRITON_DEVICE, torch.float32),
        "D": r(d).to(TRITON_DEVICE, torch.float32),
        "z": xz[:, 2 * d :],
        "delta_bias": (0.3 * r(d)).to(TRITON_DEVICE, torch.float32),
    }
    inp = {k: v if k in ("u", "z") else v.requires_grad_() for k, v in leaves.items()}
    assert not any(inp[k].is_contiguous() for k in ("u", "delta", "z"))
    y, h = selective_scan_triton(**inp, delta_softplus=True, return_last_state=True, chunk=8)
    inp64 = {k: v.detach().double().requires_grad_() for k, v in inp.items()}
    y64, h64 = selective_scan_ref(**inp64, delta_softplus=True, return_last_state=True)
    assert rel_err(y, y64) < FP32_FWD and rel_err(h, h64) < FP32_FWD
    gy = torch.randn(y64.shape, generator=g, dtype=torch.float64).to(TRITON_DEVICE)
    names = ["delta", "A", "B", "C", "D", "delta_bias"]
    grads = torch.autograd.grad((y * gy.float()).sum(), [inp[k] for k in names] + [xz_t])
    grads64 = torch.autograd.grad((y64 * gy).sum(), [inp64[k] for k in names + ["u", "z"]])
    for k, a, c in zip(names, grads, grads64):
        assert rel_err(a, c) < FP32_GRAD, k
    g_xz = grads[-1].transpose(1, 2)
    assert rel_err(g_xz[:, :d], grads64[-2]) < FP32_GRAD and rel_err(g_xz[:, 2 * d :], grads64[-1]) < FP32_GRAD
