"""Triton Mamba-3 scan (run under TRITON_INTERPRET=1 on the CPU, natively on a GPU): the forward
against the float64 reference on awkward shapes (masked N and P, MIMO, initial state), the final
state, the gradients (recomputed through the PyTorch path), and the decode step."""

import pytest
import torch
from compressmamba.kernels.mamba3 import mamba3_scan_ref, mamba3_step_ref
from compressmamba.kernels.mamba3.scan import mamba3_scan_triton, mamba3_step_triton

from mamba3_utils import leaves, make_mamba3_inputs
from scan_utils import TRITON_DEVICE, rel_err

pytestmark = pytest.mark.usefixtures("poison_empty")

FP32 = 2e-5  # float32 kernel against float64


def _to(inp, dtype=None, device=TRITON_DEVICE):
    out = {}
    for k, v in inp.items():
        if isinstance(v, tuple):
            out[k] = tuple(
                t.detach().to(device=device, dtype=dtype or t.dtype).requires_grad_(t.requires_grad) for t in v
            )
        elif v is not None:
            out[k] = v.detach().to(device=device, dtype=dtype or v.dtype).requires_grad_(v.requires_grad)
        else:
            out[k] = None
    return out


CASES = [  # b, l, h, p, g, n, s, r: masked N and P (P = 40 spans two blocks of 32), MIMO
    (2, 7, 4, 12, 2, 10, 2, 1),
    (1, 5, 2, 6, 1, 12, 6, 4),
    (1, 3, 2, 40, 2, 33, 4, 2),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}_l{}_h{}_p{}_g{}_n{}_s{}_r{}".format(*c))
@pytest.mark.parametrize("with_state", [False, True])
def test_triton_forward_and_state_match_reference(case, with_state):
    b, l, h, p, g, n, s, r = case
    inp = make_mamba3_inputs(b, l, h, p, g, n, s, r=r, mimo=r > 1, seed=l, with_state=with_state)
    y, st = mamba3_scan_triton(**_to(inp, torch.float32), return_final_state=True)
    y_ref, st_ref = mamba3_scan_ref(**inp, return_final_state=True)
    assert y.dtype == torch.float32 and rel_err(y.cpu(), y_ref) < FP32
    for a, c in zip(st, st_ref):
        assert rel_err(a.cpu(), c) < FP32


def test_triton_gradients_match_reference():
    inp = make_mamba3_inputs(2, 6, 2, 6, 1, 10, 2, r=2, mimo=True, seed=3, with_state=True, grad=True)
    tri = _to(inp, torch.float64)
    y, st = mamba3_scan_triton(**tri, return_final_state=True)
    y_ref, st_ref = mamba3_scan_ref(**inp, return_final_state=True)
    gen = torch.Generator().manual_seed(5)
    w = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in (y_ref, st_ref[1], st_ref[2])]
    loss = lambda out, state: sum((a.cpu() * c).sum() for a, c in zip((out, state[1], state[2]), w))
    grads = torch.autograd.grad(loss(y, st), leaves(tri))
    grads_ref = torch.autograd.grad(loss(y_ref, st_ref), leaves(inp))
    assert len(grads) == len(grads_ref) == 15
    for a, c in zip(grads, grads_ref):
        assert rel_err(a.cpu(), c) < 1e-10


def test_triton_step_matches_reference_step():
    inp = make_mamba3_inputs(2, 1, 4, 7, 2, 9, 3, r=3, mimo=True, seed=8, with_state=True)
    state = inp.pop("initial_state")
    one = {k: (v[:, 0] if k in ("x", "delta", "A", "trap", "B", "C", "theta") else v) for k, v in inp.items()}
    y, new = mamba3_step_triton(tuple(t.float() for t in state), **_to(one, torch.float32, "cpu"))
    y_ref, new_ref = mamba3_step_ref(state, **one)
    assert y.shape == (2, 3, 4, 7) and rel_err(y, y_ref) < FP32
    for a, c in zip(new, new_ref):
        assert rel_err(a, c) < FP32


def test_dispatch_by_name_runs_the_kernel():
    from compressmamba.kernels.mamba3 import mamba3_scan_fn

    inp = make_mamba3_inputs(1, 4, 2, 5, 1, 6, 1, seed=9)
    y = mamba3_scan_fn(**_to(inp, torch.float32), backend="triton")
    assert rel_err(y.cpu(), mamba3_scan_ref(**inp)) < FP32
