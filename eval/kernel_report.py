"""Compile every Triton kernel for an NVIDIA architecture without a GPU and report what ptxas
says of it: registers per thread, spill bytes, shared memory, and the instructions of the hot
loop. Spills, a register count that caps occupancy, or per-step layout conversions show up here
before anyone times the kernels on a device.

Each kernel is compiled exactly as a real launch would compile it: the public op runs on
``meta`` tensors of the Mamba-130m layer shape (batch 8, dim 1536, L 2048) with the Triton kernel
replaced by a recorder, and the recorded arguments go through Triton's own specialisation
(16-byte-aligned pointers, integers equal to 1 or divisible by 16) before compilation.

    python -m compressmamba.eval.kernel_report                    # sm_90 (H100), N 4..128
    python -m compressmamba.eval.kernel_report --arch 80 --states 16,128 --warps 4
    python -m compressmamba.eval.kernel_report --launcher          # the warps the launchers pick
    python -m compressmamba.eval.kernel_report --ssd --states 16,64,128   # the SSD (Mamba-2) kernels

It needs the ptxas that ships inside the triton wheel (triton/backends/nvidia/bin), not CUDA,
and runs the compiler in this process with ``TRITON_INTERPRET=0`` (set before the kernels are
defined; it refuses to run under the interpreter).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    raise RuntimeError("kernel_report compiles for a GPU: run it with TRITON_INTERPRET unset or 0")

import torch  # noqa: E402
import triton  # noqa: E402
from compressmamba.kernels.conv1d import kernel as conv  # noqa: E402
from compressmamba.kernels.selective_scan import scan, step  # noqa: E402
from compressmamba.kernels.ssd import scan as ssd_scan  # noqa: E402
from compressmamba.kernels.ssd import step as ssd_step  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402


def _jit(fn):
    """The JITFunction under an autotuner or heuristics wrapper."""
    while not isinstance(fn, JITFunction):
        fn = fn.fn
    return fn


def _ptxas() -> Path:
    """The newest ptxas in the wheel (Triton's PTX version can be newer than the plain ptxas)."""
    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    newest = bin_dir / "ptxas-blackwell"
    return newest if newest.exists() else bin_dir / "ptxas"


class _Recorder:
    """Stands in for a Triton kernel: ``kernel[grid](*args, **kwargs)`` records the call."""

    def __init__(self, fn):
        self.fn, self.calls = _jit(fn), []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((args, kwargs))


def recorded_launches(n: int, dtype=torch.float32, b: int = 8, d: int = 1536, L: int = 2048):
    """(label, JITFunction, args, kwargs) of every kernel launch for one Mamba layer of state size
    n, with the strides the model passes: scan forward and backward, decode step, conv1d forward
    and backward (width 4, on the strided half of the transposed in_proj output). The launchers pick
    the block as they do without autotuning; the warps are the caller's."""
    targets = [(scan, "_fwd_kernel"), (scan, "_bwd_kernel"), (step, "_step_kernel")]
    targets += [(conv, "_conv_fwd_kernel"), (conv, "_conv_bwd_kernel")]
    saved = {(m, name): getattr(m, name) for m, name in targets}
    saved_interpret = scan._INTERPRET
    recorders = {name: _Recorder(getattr(m, name)) for m, name in targets}
    try:
        for m, name in targets:
            setattr(m, name, recorders[name])
        scan._INTERPRET = True  # the launcher's own block choice instead of the autotuner
        conv._conv_fwd_kernel = recorders["_conv_fwd_kernel"]
        meta = lambda *shape: torch.empty(*shape, device="meta", dtype=dtype).requires_grad_()  # noqa: E731
        # as the model calls it: u the conv output (contiguous), delta a transposed projection,
        # z the second half of the transposed in_proj output
        u = meta(b, d, L)
        dt = torch.empty(b, L, d, device="meta", dtype=dtype).transpose(1, 2).requires_grad_()
        z = torch.empty(b, L, 2 * d, device="meta", dtype=dtype).transpose(1, 2)[:, d:].requires_grad_()
        A, B, C = meta(d, n).float(), meta(b, n, L), meta(b, n, L)
        D, bias = meta(d).float(), meta(d).float()
        y = scan.selective_scan_triton(u, dt, A, B, C, D, z, bias, True)
        torch.autograd.grad(y.float().sum(), (u, dt, A, B, C, D, z, bias))
        state = torch.empty(b, d, n, device="meta")
        step.selective_state_update_triton(
            state, u[..., 0], dt[..., 0], A, B[..., 0], C[..., 0], D, z[..., 0], bias, True
        )
        xz = torch.empty(b, L, 2 * d, device="meta", dtype=dtype).transpose(1, 2)
        x = xz[:, :d].requires_grad_()
        w, wb = meta(d, 4), meta(d)
        out = conv.causal_conv1d_triton(x, w, wb, silu=True)
        torch.autograd.grad(out.float().sum(), (x, w, wb))
    finally:
        for (m, name), fn in saved.items():
            setattr(m, name, fn)
        scan._INTERPRET = saved_interpret
    labels = {
        "_fwd_kernel": f"scan fwd N={n}",
        "_bwd_kernel": f"scan bwd N={n}",
        "_step_kernel": f"decode step N={n}",
        "_conv_fwd_kernel": "conv1d fwd W=4",
        "_conv_bwd_kernel": "conv1d bwd W=4",
    }
    return [(labels[name], rec.fn, *rec.calls[0]) for name, rec in recorders.items()]


SSD_KERNELS = {
    "_chunk_outer_kernel": "ssd chunk states / dy outer",
    "_pass_kernel": "ssd state passing",
    "_chunk_out_kernel": "ssd chunk output",
    "_chunk_bwd_kernel": "ssd chunk bwd",
}


def recorded_ssd_launches(n: int, dtype=torch.float32, b: int = 8, L: int = 2048, h: int = 24, p: int = 64):
    """(label, JITFunction, args, kwargs) of every SSD kernel launch for one Mamba-2 layer of state
    size n at the mamba2-130m shape (24 heads of 64 channels, one group), x, B and C slices of one
    conv output as the mixer passes them, with the launchers' block and warps. The forward and the
    backward each launch the chunk-outer and the passing kernel once; the backward's are recorded."""
    targets = [(ssd_scan, name) for name in SSD_KERNELS] + [(ssd_step, "_step_kernel")]
    saved = {(m, name): getattr(m, name) for m, name in targets}
    recorders = {(m, name): _Recorder(getattr(m, name)) for m, name in targets}
    try:
        for (m, name), rec in recorders.items():
            setattr(m, name, rec)
        xBC = torch.empty(b, L, h * p + 2 * n, device="meta", dtype=dtype).requires_grad_()
        x = xBC[..., : h * p].view(b, L, h, p)
        B, C = xBC[..., h * p : h * p + n].view(b, L, 1, n), xBC[..., h * p + n :].view(b, L, 1, n)
        f32 = lambda *shape: torch.empty(*shape, device="meta").requires_grad_()  # noqa: E731
        dt, A, D, bias = f32(b, L, h), f32(h), f32(h), f32(h)
        y, last = ssd_scan.ssd_scan_triton(x, dt, A, B, C, None, D, None, bias, None, True, True)
        torch.autograd.grad(y.float().sum() + last.sum(), (xBC, dt, A, D, bias))
        state = torch.empty(b, h, p, n, device="meta")
        ssd_step.ssd_state_update_triton(state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D, None, bias, True)
    finally:
        for (m, name), fn in saved.items():
            setattr(m, name, fn)
    rows = []
    for (_, name), rec in recorders.items():
        label = SSD_KERNELS.get(name, "ssd decode step")
        rows.append((f"{label} N={n}", rec.fn, *rec.calls[-1]))
    return rows


def launcher_warps(label: str, kwargs: dict) -> int:
    """The warps a launcher uses where it does not autotune (deterministic backward, decode step);
    the conv kernels autotune over 4 and 8 warps, 4 is reported."""
    if label.startswith("conv1d"):
        return 4
    if label.startswith("ssd"):
        return kwargs["num_warps"]
    return scan.fixed_warps(kwargs["BLOCK_D"], kwargs["BLOCK_N"])


def _compile(fn: JITFunction, args: tuple, kwargs: dict, arch: int):
    """Compile as a launch would: Triton's binder specialises the arguments (alignment,
    divisibility by 16, integers equal to 1), then the source is compiled for ``arch``."""
    target = GPUTarget("cuda", arch, 32)
    try:  # Triton's launch internals (3.9): how a launch binds and specialises its arguments
        from triton.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature

        backend = make_backend(target)
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    except (ImportError, AttributeError, TypeError, ValueError) as e:
        raise RuntimeError(
            f"kernel_report uses Triton's launch internals, which differ in Triton {triton.__version__}: {e!r}"
        ) from e
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)


def compile_report(fn: JITFunction, args: tuple, kwargs: dict, arch: int) -> dict:
    """Compile (see ``_compile``), assemble with ptxas -v; registers, spills, shared bytes and
    the hot loop's instruction statistics."""
    compiled = _compile(fn, args, kwargs, arch)
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "k.ptx"
        ptx.write_text(compiled.asm["ptx"])
        sm = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        cmd = [str(_ptxas()), f"-arch={sm}", "-v", str(ptx), "-o", str(Path(tmp) / "k.cubin")]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"ptxas failed ({res.returncode}): {res.stderr.strip()[:500]}")
        log = res.stderr
        cuobjdump = _ptxas().parent / "cuobjdump"
        sass = ""  # no loop statistics without cuobjdump
        if cuobjdump.exists():
            sass = subprocess.run(
                [str(cuobjdump), "-sass", str(Path(tmp) / "k.cubin")], capture_output=True, text=True
            ).stdout
    num = lambda pat: int(m.group(1)) if (m := re.search(pat, log)) else 0  # noqa: E731
    return dict(
        registers=num(r"Used (\d+) registers"),
        spill_stores=num(r"(\d+) bytes spill stores"),
        spill_loads=num(r"(\d+) bytes spill loads"),
        shared=compiled.metadata.shared,
        **loop_stats(sass),
    )


def loop_stats(sass: str) -> dict:
    """The hot loop of a kernel's SASS: the longest loop (a span closed by a backward branch)
    that contains no other loop. Reports its
    instructions, those a step always issues (outside the blocks a predicated forward branch can
    skip, such as a flush every 16 steps), and the MUFU and barrier (BAR: a layout conversion
    through shared memory) instructions a step always issues."""
    ins = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    loops = []  # (start, end) of every backward branch
    for addr, text in ins:
        m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) < addr:
            loops.append((int(m.group(1), 16), addr))
    innermost = [(a, b) for a, b in loops if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops)]
    best = None
    for a, b in innermost:  # the longest loop that holds no other loop
        body = [(x, t) for x, t in ins if a <= x <= b]
        if best is None or len(body) > len(best):
            best = body
    if best is None:
        return dict(loop_instructions=0, step_instructions=0, step_barriers=0, step_mufu=0)
    skipped = set()
    for addr, text in best:
        m = re.search(r"^@!?U?P\w+\s+BRA\b.*?0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) > addr:
            skipped.update(a for a, _ in best if addr < a < int(m.group(1), 16))
    ops = [re.sub(r"^@!?U?P\w+\s+", "", t).split()[0] for a, t in best if a not in skipped]
    return dict(
        loop_instructions=len(best),
        step_instructions=len(ops),
        step_barriers=sum(op.startswith("BAR") for op in ops),
        step_mufu=sum(op.startswith("MUFU") for op in ops),
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90, help="compute capability x10: 80 (A100), 90 (H100/H200)")
    p.add_argument("--states", type=lambda s: [int(x) for x in s.split(",")], default=[4, 16, 64, 128])
    p.add_argument("--warps", type=lambda s: [int(x) for x in s.split(",")], default=[2, 4, 8])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--launcher", action="store_true", help="only the warps the launchers use without autotuning")
    p.add_argument("--ssd", action="store_true", help="the SSD (Mamba-2) kernels instead (mamba2-130m layer shape)")
    args = p.parse_args(argv)
    print(f"Triton {triton.__version__}, sm_{args.arch}, inputs {args.dtype} (dim 1536 for BLOCK_D)")
    print(
        "| kernel | tile | warps | registers | spill stores B | spill loads B | shared B "
        "| loop instr | every-step instr | per element-step | MUFU per step | barriers per step |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    record = recorded_ssd_launches if args.ssd else recorded_launches
    launches = [launch for n in args.states for launch in record(n, dtype)]
    seen = set()
    for label, fn, call_args, call_kwargs in launches:
        if label in seen:  # the conv kernels do not depend on N
            continue
        seen.add(label)
        keys = ("Q", "BLOCK_P", "BLOCK_D", "BLOCK_N", "BLOCK_L")
        tile = "x".join(str(call_kwargs[k]) for k in keys if k in call_kwargs)
        for w in [launcher_warps(label, call_kwargs)] if args.launcher else args.warps:
            r = compile_report(fn, call_args, dict(call_kwargs, num_warps=w), args.arch)
            rows.append((label, w, r))
            cells = f"{r['registers']} | {r['spill_stores']} | {r['spill_loads']} | {r['shared']}"
            loop = "— | — | — | — | —"
            if r["loop_instructions"] and {"BLOCK_D", "BLOCK_N"} <= call_kwargs.keys():  # the Mamba-1 scan
                per_thread = max(1, call_kwargs["BLOCK_D"] * call_kwargs["BLOCK_N"] // (32 * w))
                per_el = r["step_instructions"] / per_thread
                loop = f"{r['loop_instructions']} | {r['step_instructions']} | {per_el:.0f} | "
                loop += f"{r['step_mufu']} | {r['step_barriers']}"
            print(f"| {label} | {tile} | {w} | {cells} | {loop} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
