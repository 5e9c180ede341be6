import pytest
import torch
from compressmamba.kernels.selective_scan.step import selective_state_update_triton

from compressmamba.kernels import selective_scan_ref, selective_state_update, selective_state_update_ref

from scan_utils import TRITON_DEVICE, make_inputs, rel_err

# every buffer the launchers allocate starts as NaN (tests/kernels/conftest.py): an element a
# kernel skips fails the comparison
pytestmark = pytest.mark.usefixtures("poison_empty")


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("n,groups", [(1, None), (13, None), (47, 2), (64, None)])
def test_decode_steps_equal_full_scan(n, groups, backend):
    """The decode step (CPU reference path and the Triton kernel) iterated over L equals the scan."""
    dev = TRITON_DEVICE if backend == "triton" else "cpu"
    inp = make_inputs(2, 4, n, 9, groups=groups, seed=n, device=dev)
    inp = {k: v.detach() if v is not None else None for k, v in inp.items()}
    y, h = selective_scan_ref(
        **{k: v.double() if v is not None else None for k, v in inp.items()},
        delta_softplus=True,
        return_last_state=True,
    )
    state = torch.zeros(2, 4, n, device=dev)
    outs = []
    for t in range(9):
        outs.append(
            selective_state_update(
                state,
                inp["u"][..., t],
                inp["delta"][..., t],
                inp["A"],
                inp["B"][..., t],
                inp["C"][..., t],
                inp["D"],
                inp["z"][..., t],
                inp["delta_bias"],
                True,
                backend=backend,
            )
        )
    assert rel_err(torch.stack(outs, -1), y) < 1e-5 and rel_err(state, h) < 1e-5


def test_dispatch_by_name_matches_cpu_step():
    inp = {k: v.detach() if v is not None else None for k, v in make_inputs(1, 3, 5, 1, seed=1).items()}
    s1 = torch.randn(1, 3, 5)
    s2 = s1.clone().to(TRITON_DEVICE)
    args = (
        inp["u"][..., 0],
        inp["delta"][..., 0],
        inp["A"],
        inp["B"][..., 0],
        inp["C"][..., 0],
        inp["D"],
        inp["z"][..., 0],
        inp["delta_bias"],
        True,
    )
    on = lambda t: t.to(TRITON_DEVICE) if isinstance(t, torch.Tensor) else t  # noqa: E731
    y2 = selective_state_update(s2, *map(on, args), backend="triton")
    y1 = selective_state_update(s1, *args, backend="cpu")
    assert rel_err(y2.cpu(), y1) < 1e-6 and rel_err(s2.cpu(), s1) < 1e-6


def test_strided_state_low_precision_and_no_options():
    """A non-contiguous bf16 state (a cache slice), B/C grouped, no D/z/bias: matches the reference."""
    b, d, n = 2, 6, 13
    g = torch.Generator().manual_seed(4)
    r = lambda *s: torch.randn(*s, generator=g)
    store = r(b, n, d).to(TRITON_DEVICE, torch.bfloat16)
    state = store.transpose(1, 2)  # (b, d, n) view, strides (n*d, 1, d)
    state_ref = state.double().clone()
    x, dt, A, B, C = (
        t.to(TRITON_DEVICE) for t in (r(b, d), 0.5 * r(b, d), -torch.exp(0.5 * r(d, n)), r(b, 3, n), r(b, 3, n))
    )
    y = selective_state_update_triton(state, x, dt, A, B, C)
    y64 = selective_state_update_ref(state_ref, x.double(), dt.double(), A.double(), B.double(), C.double())
    assert rel_err(y, y64) < 1e-5 and rel_err(store.transpose(1, 2), state_ref) < 1e-2


def test_too_large_state_is_refused():
    state = torch.zeros(1, 2, 300)
    with pytest.raises(ValueError, match="d_state 300"):
        selective_state_update_triton(
            state, torch.ones(1, 2), torch.ones(1, 2), -torch.ones(2, 300), *[torch.ones(1, 300)] * 2
        )
