"""The public Mamba-3 ops: input checks in one place, then the backend (CPU tensors: the chunked
PyTorch path; CUDA tensors: the Triton kernel when it imports). ``backend=`` forces ``cpu``,
``ref`` or ``triton`` (on CPU tensors only under TRITON_INTERPRET=1)."""

from __future__ import annotations

from torch import Tensor

from ..backend_checks import check_devices_and_floats, pick_backend, shape_error
from .cpu import mamba3_scan_cpu
from .reference import mamba3_scan_ref, mamba3_step_ref

BACKENDS = ("auto", "cpu", "ref", "triton")
TRITON_MODULE = "compressmamba.kernels.mamba3.scan"


def check_inputs(x, delta, A, trap, B, C, theta, B_bias, C_bias, D=None, mimo_x=None) -> None:
    """ValueError naming the first input whose shape does not fit x (b, l, H, P) and B (b, l, R, G, N)."""
    if x.dim() != 4:
        shape_error("x", x, "(batch, length, heads, head_dim)")
    b, l, h, p = x.shape
    if B.dim() != 5 or B.shape[:2] != (b, l) or h % B.shape[3]:
        shape_error("B", B, f"(batch={b}, length={l}, ranks, groups dividing heads={h}, N)")
    r, g, n = B.shape[2:]
    want = {
        "delta": (b, l, h), "A": (b, l, h), "trap": (b, l, h), "C": (b, l, r, g, n),
        "B_bias": (h, r, n), "C_bias": (h, r, n), "D": (h,), "mimo_x": (h, r, p),
    }  # fmt: skip
    given = {"delta": delta, "A": A, "trap": trap, "C": C, "B_bias": B_bias, "C_bias": C_bias, "D": D, "mimo_x": mimo_x}
    for name, t in given.items():
        if t is not None and tuple(t.shape) != want[name]:
            shape_error(name, t, str(want[name]))
    if theta.dim() != 3 or theta.shape[:2] != (b, l) or 2 * theta.shape[2] > n:
        shape_error("theta", theta, f"(batch={b}, length={l}, S) with 2S <= N={n}")
    if mimo_x is None and r != 1:
        raise ValueError(f"B has {r} ranks but mimo_x is None; give mimo_x (heads, ranks, head_dim) for MIMO")
    check_devices_and_floats({"x": x, "delta": delta, "A": A, "trap": trap, "B": B, "C": C, "theta": theta})


def mamba3_scan_fn(x: Tensor, delta: Tensor, A: Tensor, trap: Tensor, B: Tensor, C: Tensor, theta: Tensor,
                   B_bias: Tensor, C_bias: Tensor, D: Tensor | None = None, mimo_x: Tensor | None = None,
                   initial_state: tuple | None = None, return_final_state: bool = False, chunk_size: int = 64,
                   *, backend: str = "auto"):  # fmt: skip
    """Mamba-3 scan (kernels/mamba3/reference.py defines it): y (b, l, R, H, P), and the final
    state (angles, ssm, k, v) with ``return_final_state``."""
    check_inputs(x, delta, A, trap, B, C, theta, B_bias, C_bias, D, mimo_x)
    args = (x, delta, A, trap, B, C, theta, B_bias, C_bias, D, mimo_x)
    which = pick_backend(backend, BACKENDS, x, "mamba3_scan_fn", TRITON_MODULE)
    kw = {"initial_state": initial_state, "return_final_state": return_final_state}
    if which == "triton":
        from .scan import mamba3_scan_triton

        return mamba3_scan_triton(*args, **kw)
    if which == "ref":
        return mamba3_scan_ref(*args, **kw)
    return mamba3_scan_cpu(*args, **kw, chunk_size=chunk_size)


def mamba3_step(state: tuple, x, delta, A, trap, B, C, theta, B_bias, C_bias, D=None, mimo_x=None, *, backend="auto"):
    """One decode token (the signature of :func:`reference.mamba3_step_ref`): the Triton kernel for
    CUDA tensors, the PyTorch step otherwise."""
    if pick_backend(backend, BACKENDS, x, "mamba3_step", TRITON_MODULE) == "triton":
        from .scan import mamba3_step_triton

        return mamba3_step_triton(state, x, delta, A, trap, B, C, theta, B_bias, C_bias, D, mimo_x)
    return mamba3_step_ref(state, x, delta, A, trap, B, C, theta, B_bias, C_bias, D, mimo_x)
