import importlib.util

import pytest
import torch
from compressmamba.kernels.selective_scan import cpu

from compressmamba.kernels import selective_scan_fn, selective_scan_ref, selective_state_update

from scan_utils import TRITON_DEVICE, make_inputs, reference, rel_err, run


def _detached(inp):
    return {k: v.detach() if v is not None else None for k, v in inp.items()}


def test_chunking_does_not_change_results(monkeypatch):
    """Many short chunks (ragged last one) give the reference's outputs, state and gradients."""
    monkeypatch.setattr(cpu, "chunk_len", lambda L, per_step: 5)
    inp = make_inputs(2, 6, 7, 61, groups=3, seed=11)
    y, h, g = run(cpu.selective_scan_cpu, inp, True, True)
    y64, h64, g64 = reference(inp, True, True)
    assert rel_err(y, y64) < 1e-5 and rel_err(h, h64) < 1e-5
    for k in g64:
        assert rel_err(g[k], g64[k]) < 1e-4, k


def test_chunk_len_bounds():
    assert cpu.chunk_len(1, 10**9) == 1
    assert cpu.chunk_len(2048, 8 * 1536 * 16) == 8
    assert cpu.chunk_len(2048, 2 * 256 * 16) == 64
    assert cpu.chunk_len(40, 12) == 40


@pytest.mark.parametrize("n,groups", [(3, None), (16, 2)])
def test_cpu_decode_steps_equal_full_scan(n, groups):
    b, d, L = 2, 4, 9
    inp = _detached(make_inputs(b, d, n, L, groups=groups, seed=n))
    y_full, h_full = selective_scan_fn(**inp, delta_softplus=True, return_last_state=True, backend="cpu")
    state = torch.zeros(b, d, n)
    ys = []
    for t in range(L):
        ys.append(
            selective_state_update(
                state, inp["u"][..., t], inp["delta"][..., t], inp["A"], inp["B"][..., t], inp["C"][..., t],
                inp["D"], inp["z"][..., t], inp["delta_bias"], True, backend="cpu",
            )
        )  # fmt: skip
    assert rel_err(torch.stack(ys, -1), y_full) < 1e-5 and rel_err(state, h_full) < 1e-5


def test_dtype_and_device_mismatches_are_named():
    inp = _detached(make_inputs(2, 6, 5, 9))
    with pytest.raises(ValueError, match=r"delta has dtype torch.float64, expected torch.float32 like u"):
        selective_scan_fn(**{**inp, "delta": inp["delta"].double()})
    with pytest.raises(ValueError, match=r"C has dtype torch.bfloat16, expected torch.float32 like B"):
        selective_scan_fn(**{**inp, "C": inp["C"].bfloat16()})
    with pytest.raises(ValueError, match=r"u has dtype torch.int64"):
        selective_scan_fn(**{**inp, "u": inp["u"].long(), "delta": inp["delta"].long(), "z": None})
    with pytest.raises(ValueError, match="different devices"):
        selective_scan_fn(**{**inp, "A": inp["A"].to("meta")})
    with pytest.raises(ValueError, match=r"B has shape \(2, 4, 5, 9\), expected \(2, groups dividing 6, 5, 9\)"):
        selective_scan_fn(**{**inp, "B": torch.randn(2, 4, 5, 9)})


def test_decode_step_bad_inputs():
    state, x, A = torch.randn(2, 4, 3), torch.randn(2, 4), -torch.rand(4, 3)
    B = C = torch.randn(2, 3)
    selective_state_update(state, x, x, A, B, C)  # valid
    with pytest.raises(ValueError, match=r"dt has shape \(2, 5\), expected \(2, 4\)"):
        selective_state_update(state, x, torch.randn(2, 5), A, B, C)
    with pytest.raises(ValueError, match=r"C has shape \(2, 4\), expected \(2, 3\)"):
        selective_state_update(state, x, x, A, B, torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"dt_bias has shape \(3,\), expected \(4,\)"):
        selective_state_update(state, x, x, A, B, C, dt_bias=torch.randn(3))
    with pytest.raises(ValueError, match="backend"):
        selective_state_update(state, x, x, A, B, C, backend="cuda")


@pytest.mark.skipif(importlib.util.find_spec("mamba_ssm") is not None, reason="mamba-ssm installed")
def test_mamba_ssm_backend_needs_the_package():
    inp = _detached(make_inputs(1, 2, 3, 4))
    with pytest.raises(ValueError, match="mamba-ssm"):
        selective_scan_fn(**inp, backend="mamba_ssm")


def test_forced_triton_matches_reference():
    """backend="triton" on CPU tensors (under the interpreter) or CUDA ones (on a GPU)."""
    inp = _detached(make_inputs(1, 3, 5, 11, seed=3, device=TRITON_DEVICE))
    inp = {**inp, "B": inp["B"].transpose(1, 2).contiguous().transpose(1, 2)}  # non-contiguous
    y = selective_scan_fn(**inp, delta_softplus=True, backend="triton")
    assert rel_err(y, selective_scan_ref(**inp, delta_softplus=True)) < 1e-5
