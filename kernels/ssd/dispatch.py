"""The public SSD (Mamba-2) ops: input checks in one place, then the backend."""

from __future__ import annotations

from ..backend_checks import check_triton_device, triton_available
from .cpu import ssd_scan_cpu
from .reference import ssd_scan_ref, ssd_state_update_ref

BACKENDS = ("auto", "triton", "cpu", "ref")


def _shape_error(name, t, expected):
    raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {expected}")


def _check_devices_and_floats(tensors: dict) -> None:
    """ValueError unless the given (non-None) tensors share one device and are floating point."""
    devices = {k: t.device for k, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        raise ValueError(f"inputs are on different devices: {devices}")
    for k, t in tensors.items():
        if t is not None and not t.is_floating_point():
            raise ValueError(f"{k} has dtype {t.dtype}, expected a floating-point tensor")


def _check_head_params(h, p, A, D, dt_bias) -> None:
    if A.shape != (h,):
        _shape_error("A", A, f"({h},): one scalar per head")
    if D is not None and D.shape not in ((h,), (h, p)):
        _shape_error("D", D, f"({h},) or ({h}, {p})")
    if dt_bias is not None and dt_bias.shape != (h,):
        _shape_error("dt_bias", dt_bias, f"({h},)")


def _check_groups(name, X, lead, h) -> None:
    """B or C: (*lead, groups, d_state) with groups dividing the number of heads."""
    k = len(lead)
    if X.dim() != k + 2 or tuple(X.shape[:k]) != tuple(lead) or X.shape[k] < 1 or h % X.shape[k] != 0:
        _shape_error(name, X, f"({', '.join(map(str, lead))}, groups dividing {h}, d_state)")


def check_ssd_inputs(x, dt, A, B, C, D, z, dt_bias, initial_states) -> None:
    """ValueError naming the argument, the shape found and the shape expected."""
    if x.dim() != 4 or x.shape[1] < 1:
        _shape_error("x", x, "(batch, seqlen >= 1, nheads, headdim)")
    b, l, h, p = x.shape
    if dt.shape != (b, l, h):
        _shape_error("dt", dt, f"({b}, {l}, {h}) (batch, seqlen, nheads)")
    _check_head_params(h, p, A, D, dt_bias)
    _check_groups("B", B, (b, l), h)
    if C.shape != B.shape:
        _shape_error("C", C, f"{tuple(B.shape)} like B")
    if z is not None and z.shape != x.shape:
        _shape_error("z", z, f"{tuple(x.shape)} like x")
    n = B.shape[-1]
    if initial_states is not None and initial_states.shape != (b, h, p, n):
        _shape_error("initial_states", initial_states, f"({b}, {h}, {p}, {n}) (batch, nheads, headdim, d_state)")
    tensors = dict(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states)
    _check_devices_and_floats(tensors)


def check_ssd_step_inputs(state, x, dt, A, B, C, D, z, dt_bias) -> None:
    """Decode-step inputs: ValueError naming the argument, the shape found and the shape expected."""
    if state.dim() != 4:
        _shape_error("state", state, "(batch, nheads, headdim, d_state)")
    b, h, p, n = state.shape
    for name, t in (("x", x), ("z", z)):
        if t is not None and t.shape != (b, h, p):
            _shape_error(name, t, f"({b}, {h}, {p}) like state's first three dims")
    if dt.shape != (b, h):
        _shape_error("dt", dt, f"({b}, {h}) (batch, nheads)")
    _check_head_params(h, p, A, D, dt_bias)
    _check_groups("B", B, (b,), h)
    if B.shape[-1] != n:
        _shape_error("B", B, f"({b}, groups, {n}) with state's d_state")
    if C.shape != B.shape:
        _shape_error("C", C, f"{tuple(B.shape)} like B")
    tensors = dict(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    _check_devices_and_floats(tensors)


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
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    check_ssd_inputs(x, dt, A, B, C, D, z, dt_bias, initial_states)
    kw = dict(
        D=D,
        z=z,
        dt_bias=dt_bias,
        initial_states=initial_states,
        dt_softplus=dt_softplus,
        return_final_states=return_final_states,
    )
    if backend == "auto":
        backend = "triton" if x.is_cuda and _triton_available() else "cpu"
    if backend == "triton":
        check_triton_device(x, "ssd_scan_fn")
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
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    check_ssd_step_inputs(state, x, dt, A, B, C, D, z, dt_bias)
    if backend == "triton":
        check_triton_device(state, "ssd_state_update")
    if backend == "triton" or (backend == "auto" and state.is_cuda and _triton_available()):
        from .step import ssd_state_update_triton

        return ssd_state_update_triton(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    return ssd_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


def _triton_available() -> bool:
    return triton_available("compressmamba.kernels.ssd.scan")


__all__ = ["ssd_scan_fn", "ssd_state_update", "check_ssd_inputs", "check_ssd_step_inputs"]
