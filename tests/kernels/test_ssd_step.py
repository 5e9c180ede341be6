"""Triton SSD (Mamba-2) decode step: against the PyTorch step on masked N and both D shapes, and
iterated over a sequence against the Triton scan (outputs and final state)."""

import pytest
import torch
from compressmamba.kernels.ssd.scan import ssd_scan_triton
from compressmamba.kernels.ssd.step import ssd_state_update_triton

from compressmamba.kernels import ssd_state_update, ssd_state_update_ref

from scan_utils import TRITON_DEVICE, rel_err
from ssd_utils import make_ssd_inputs

pytestmark = pytest.mark.usefixtures("poison_empty")

STEP = ("x", "dt", "B", "C", "z")


def _step_inputs(inp, t):
    return {k: inp[k][:, t] for k in STEP if inp[k] is not None}


@pytest.mark.parametrize(
    "n,g,d_shape,has_z,softplus",
    [(13, 2, "head", True, True), (47, 1, "channel", False, False), (64, 3, None, True, True)],
)
def test_triton_step_matches_torch_step(n, g, d_shape, has_z, softplus):
    b, h, p = 2, 6, 12
    inp = make_ssd_inputs(
        b, 1, h, p, g, n, d_shape=d_shape, has_z=has_z, softplus=softplus, seed=n, device=TRITON_DEVICE
    )
    inp = {k: v.detach() if v is not None else None for k, v in inp.items()}
    common = dict(A=inp["A"], D=inp["D"], dt_bias=inp["dt_bias"], dt_softplus=softplus)
    s1, s2 = inp["initial_states"].clone(), inp["initial_states"].clone()
    y1 = ssd_state_update(s1, **_step_inputs(inp, 0), **common, backend="triton")
    s2 = inp["initial_states"].double().clone()
    y2 = ssd_state_update_ref(s2, **{k: v.double() for k, v in _step_inputs(inp, 0).items()}, **common)
    assert y1.shape == (b, h, p) and rel_err(y1, y2) < 1e-6 and rel_err(s1, s2) < 1e-6


def test_iterated_triton_step_equals_triton_scan():
    b, l, h, p, g, n = 2, 19, 4, 8, 2, 13
    inp = make_ssd_inputs(b, l, h, p, g, n, d_shape="channel", seed=3, device=TRITON_DEVICE)
    inp = {k: v.detach() for k, v in inp.items()}
    y_full, h_full = ssd_scan_triton(**inp, chunk_size=16, dt_softplus=True, return_final_states=True)
    state = inp["initial_states"].clone()
    ys = [
        ssd_state_update_triton(
            state, **_step_inputs(inp, t), A=inp["A"], D=inp["D"], dt_bias=inp["dt_bias"], dt_softplus=True
        )
        for t in range(l)
    ]
    assert rel_err(torch.stack(ys, dim=1), y_full) < 1e-5 and rel_err(state, h_full) < 1e-5


def test_step_on_a_strided_bf16_state():
    """The cache may hold the state in bf16 and as a slice of a larger buffer: written in place,
    rounded once."""
    b, h, p, g, n = 2, 4, 8, 2, 13
    inp = make_ssd_inputs(b, 1, h, p, g, n, seed=5, device=TRITON_DEVICE)
    inp = {k: v.detach() for k, v in inp.items()}
    cache = torch.zeros(b, h, p, n + 3, dtype=torch.bfloat16, device=TRITON_DEVICE)
    state = cache[..., :n]
    state.copy_(inp["initial_states"])
    ref_state = state.float().clone()
    common = dict(A=inp["A"], D=inp["D"], dt_bias=inp["dt_bias"], dt_softplus=True)
    y = ssd_state_update_triton(state, **_step_inputs(inp, 0), **common)
    y_ref = ssd_state_update_ref(ref_state, **_step_inputs(inp, 0), **common)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(state, ref_state) < 1e-2
    assert not cache[..., n:].any()  # the padding beside the slice is untouched
