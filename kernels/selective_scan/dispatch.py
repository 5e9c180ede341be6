"""The public selective-scan ops: input checks in one place, then the backend."""

from __future__ import annotations

import importlib

import torch

from ..backend_checks import check_devices_and_floats, empty_like_graph, pick_backend, shape_error
from .cpu import selective_scan_cpu
from .reference import selective_scan_ref, selective_state_update_ref

TRITON_MODULE = "compressmamba.kernels.selective_scan.scan"
BACKENDS = ("auto", "triton", "cpu", "ref", "mamba_ssm")


def check_scan_inputs(u, delta, A, B, C, D, z, delta_bias) -> None:
    """ValueError naming the argument, the shape found and the shape expected."""
    if u.dim() != 3:
        shape_error("u", u, "(batch, dim, seqlen)")
    b, d, l = u.shape
    if delta.shape != u.shape:
        shape_error("delta", delta, f"({b}, {d}, {l}) like u")
    if A.dim() != 2 or A.shape[0] != d:
        shape_error("A", A, f"({d}, d_state)")
    n = A.shape[1]
    for name, X in (("B", B), ("C", C)):
        if X.dim() == 3:
            if X.shape != (b, n, l):
                shape_error(name, X, f"({b}, {n}, {l}) or ({b}, groups, {n}, {l})")
        elif X.dim() == 4:
            if X.shape[0] != b or X.shape[2:] != (n, l) or d % X.shape[1] != 0:
                shape_error(name, X, f"({b}, groups dividing {d}, {n}, {l})")
        else:
            shape_error(name, X, f"({b}, {n}, {l}) or ({b}, groups, {n}, {l})")
    if z is not None and z.shape != u.shape:
        shape_error("z", z, f"({b}, {d}, {l}) like u")
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and v.shape != (d,):
            shape_error(name, v, f"({d},)")
    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    check_devices_and_floats(tensors)
    for k, t, like in (("delta", delta, "u"), ("z", z, "u"), ("C", C, "B")):
        ref = tensors[like]
        if t is not None and t.dtype != ref.dtype:
            raise ValueError(f"{k} has dtype {t.dtype}, expected {ref.dtype} like {like}")


def check_step_inputs(state, x, dt, A, B, C, D, z, dt_bias) -> None:
    """Decode-step inputs: ValueError naming the argument, the shape found and the shape expected."""
    if state.dim() != 3:
        shape_error("state", state, "(batch, dim, d_state)")
    b, d, n = state.shape
    for name, t in (("x", x), ("dt", dt), ("z", z)):
        if t is not None and t.shape != (b, d):
            shape_error(name, t, f"({b}, {d}) like state's first two dims")
    if A.shape != (d, n):
        shape_error("A", A, f"({d}, {n})")
    for name, X in (("B", B), ("C", C)):
        ok = X.shape == (b, n) or (X.dim() == 3 and X.shape[0] == b and X.shape[2] == n and d % X.shape[1] == 0)
        if not ok:
            shape_error(name, X, f"({b}, {n}) or ({b}, groups dividing {d}, {n})")
    for name, v in (("D", D), ("dt_bias", dt_bias)):
        if v is not None and v.shape != (d,):
            shape_error(name, v, f"({d},)")
    tensors = {"state": state, "x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "z": z, "dt_bias": dt_bias}
    check_devices_and_floats(tensors)


def _mamba_ssm_fn():
    try:
        mod = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    except ImportError as e:
        raise ValueError("backend='mamba_ssm' needs mamba-ssm: pip install 'compressmamba[cuda]'") from e
    return mod.selective_scan_fn


def selective_scan_fn(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    *,
    backend: str = "auto",
):
    """Selective scan (mamba-ssm's signature). CPU tensors → the vectorised PyTorch scan; CUDA
    tensors → Triton when available, else the PyTorch scan; ``backend`` forces one of
    ``triton`` (also on CPU tensors under TRITON_INTERPRET=1), ``cpu``, ``ref``, ``mamba_ssm``."""
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    backend = pick_backend(backend, BACKENDS, u, "selective_scan_fn", TRITON_MODULE, state_size=A.shape[1])
    if u.numel() == 0:  # batch, dim or seqlen 0: nothing to scan
        return _empty_scan(u, delta, A, B, C, D, z, delta_bias, return_last_state)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if backend == "triton":
        from .scan import selective_scan_triton

        return selective_scan_triton(*args)
    if backend == "mamba_ssm":
        return _mamba_ssm_fn()(*args)
    if backend == "ref":
        return selective_scan_ref(*args)
    return selective_scan_cpu(*args)


def _empty_scan(u, delta, A, B, C, D, z, delta_bias, return_last_state):
    """The outputs for inputs with a zero-sized batch, dim or seqlen: y (b, d, L) in u's dtype;
    the last state (b, d, n) is zero (no step was taken), in the compute dtype."""
    b, d, _ = u.shape
    ins = (u, delta, A, B, C, D, z, delta_bias)
    y = empty_like_graph(u.shape, u.dtype, *ins)
    if not return_last_state:
        return y
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    return y, empty_like_graph((b, d, A.shape[1]), ct, *ins)


def selective_state_update(
    state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, *, backend: str = "auto"
):
    """One decode step (mamba-ssm's signature). state (b, d, n) is updated in place; x, dt, z
    (b, d); A (d, n); B, C (b, n) or grouped (b, g, n); D, dt_bias (d,). Returns y (b, d) in x's
    dtype. CUDA tensors → Triton; otherwise the (already vectorised) PyTorch reference;
    ``backend="triton"`` forces the kernel (CPU tensors under TRITON_INTERPRET=1)."""
    check_step_inputs(state, x, dt, A, B, C, D, z, dt_bias)
    if pick_backend(backend, BACKENDS, state, "selective_state_update", TRITON_MODULE, A.shape[1]) == "triton":
        from .step import selective_state_update_triton

        return selective_state_update_triton(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


__all__ = ["selective_scan_fn", "selective_state_update", "check_scan_inputs", "check_step_inputs"]
