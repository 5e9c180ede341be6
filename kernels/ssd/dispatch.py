"""The public SSD (Mamba-2) ops: input checks in one place, then the backend."""

from __future__ import annotations

from ..backend_checks import check_devices_and_floats, pick_backend, shape_error
from .cpu import ssd_scan_cpu
from .reference import ssd_scan_ref, ssd_state_update_ref

TRITON_MODULE = "compressmamba.kernels.ssd.scan"
BACKENDS = ("auto", "triton", "cpu", "ref")


def _check_head_params(h, p, A, D, dt_bias) -> None:
    if A.shape != (h,):
        shape_error("A", A, f"({h},): one scalar per head")
    if D is not None and D.shape not in ((h,), (h, p)):
        shape_error("D", D, f"({h},) or ({h}, {p})")
    if dt_bias is not None and dt_bias.shape != (h,):
        shape_error("dt_bias", dt_bias, f"({h},)")


def _check_groups(name, X, lead, h) -> None:
    """B or C: (*lead, groups, d_state) with groups dividing the number of heads."""
    k = len(lead)
    if X.dim() != k + 2 or tuple(X.shape[:k]) != tuple(lead) or X.shape[k] < 1 or h % X.shape[k] != 0:
        shape_error(name, X, f"({', '.join(map(str, lead))}, groups dividing {h}, d_state)")


def check_ssd_inputs(x, dt, A, B, C, D, z, dt_bias, initial_states) -> None:
    """ValueError naming the argument, the shape found and the shape expected."""
    if x.dim() != 4 or x.shape[1] < 1:
        shape_error("x", x, "(batch, seqlen >= 1, nheads, headdim)")
    b, l, h, p = x.shape
    if dt.shape != (b, l, h):
        shape_error("dt", dt, f"({b}, {l}, {h}) (batch, seqlen, nheads)")
    _check_head_params(h, p, A, D, dt_bias)
    _check_groups("B", B, (b, l), h)
    if C.shape != B.shape:
        shape_error("C", C, f"{tuple(B.shape)} like B")
    if z is not None and z.shape != x.shape:
        shape_error("z", z, f"{tuple(x.shape)} like x")
    n = B.shape[-1]
    if initial_states is not None and initial_states.shape != (b, h, p, n):
        shape_error("initial_states", initial_states, f"({b}, {h}, {p}, {n}) (batch, nheads, headdim, d_state)")
    tensors = dict(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states)
    check_devices_and_floats(tensors)


def check_ssd_step_inputs(state, x, dt, A, B, C, D, z, dt_bias) -> None:
    """Decode-step inputs: ValueError naming the argument, the shape found and the shape expected."""
    if state.dim() != 4:
        shape_error("state", state, "(batch, nheads, headdim, d_state)")
    b, h, p, n = state.shape
    for name, t in (("x", x), ("z", z)):
        if t is not None and t.shape != (b, h, p):
            shape_error(name, t, f"({b}, {h}, {p}) like state's first three dims")
    if dt.shape != (b, h):
        shape_error("dt", dt, f"({b}, {h}) (batch, nheads)")
    _check_head_params(h, p, A, D, dt_bias)
    _check_groups("B", B, (b,), h)
    if B.shape[-1] != n:
        shape_error("B", B, f"({b}, groups, {n}) with state's d_state")
    if C.shape != B.shape:
        shape_error("C", C, f"{tuple(B.shape)} like B")
    tensors = dict(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    check_devices_and_floats(tensors)


def ssd_scan_fn(
    x,
    dt,
    A,
    B,
    C,
    chunk_size: int = 256,
    D=None,
    z=None,
    dt_bias=None,
    initial_states=None,
    dt_softplus: bool = False,
    return_final_states: bool = False,
    *,
    backend: str = "auto",
):
    """Mamba-2's SSD scan with mamba-ssm's ``mamba_chunk_scan_combined`` signature (without its
    seq_idx, dt_limit and cu_seqlens options).

    Shapes: x, z (batch, seqlen, nheads, headdim); dt (batch, seqlen, nheads); A, dt_bias
    (nheads,); B, C (batch, seqlen, ngroups, d_state) with ngroups dividing nheads (head i reads
    group i // (nheads // ngroups)); D (nheads,) or (nheads, headdim); initial_states (batch,
    nheads, headdim, d_state). Δ = softplus(dt + dt_bias) if ``dt_softplus``, else dt + dt_bias.

    Returns y (batch, seqlen, nheads, headdim) in x's dtype, and with ``return_final_states``
    also the final state (batch, nheads, headdim, d_state) in fp32 (float64 for float64 input on
    the PyTorch backends).

    Backends: CPU tensors -> ``cpu`` (the chunked PyTorch form, blocks of ``chunk_size`` steps);
    CUDA tensors -> ``triton`` when importable (its own power-of-two block, ``scan.default_chunk(d_state)``:
    the result does not depend on the block beyond rounding), else ``cpu``; ``ref`` is the step-by-step
    specification. ``backend="triton"`` also runs on CPU tensors under TRITON_INTERPRET=1.
    """
    check_ssd_inputs(x, dt, A, B, C, D, z, dt_bias, initial_states)
    backend = pick_backend(backend, BACKENDS, x, "ssd_scan_fn", TRITON_MODULE, state_size=B.shape[-1])
    kw = dict(
        D=D,
        z=z,
        dt_bias=dt_bias,
        initial_states=initial_states,
        dt_softplus=dt_softplus,
        return_final_states=return_final_states,
    )
    if backend == "triton":
        from .scan import ssd_scan_triton

        return ssd_scan_triton(x, dt, A, B, C, None, **kw)
    if backend == "ref":
        return ssd_scan_ref(x, dt, A, B, C, chunk_size, **kw)
    return ssd_scan_cpu(x, dt, A, B, C, chunk_size, **kw)


def ssd_state_update(
    state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus: bool = False, *, backend: str = "auto"
):
    """One SSD decode step. state (batch, nheads, headdim, d_state) is updated in place; x, z
    (batch, nheads, headdim); dt (batch, nheads); A, dt_bias (nheads,); B, C (batch, ngroups,
    d_state); D (nheads,) or (nheads, headdim). Returns y (batch, nheads, headdim) in x's dtype.

    CUDA tensors -> Triton; otherwise the (already vectorised) PyTorch step (``cpu`` and ``ref``
    are the same); ``backend="triton"`` forces the kernel (CPU tensors under TRITON_INTERPRET=1).
    """
    check_ssd_step_inputs(state, x, dt, A, B, C, D, z, dt_bias)
    if pick_backend(backend, BACKENDS, state, "ssd_state_update", TRITON_MODULE, state.shape[-1]) == "triton":
        from .step import ssd_state_update_triton

        return ssd_state_update_triton(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    return ssd_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


__all__ = ["ssd_scan_fn", "ssd_state_update", "check_ssd_inputs", "check_ssd_step_inputs"]
