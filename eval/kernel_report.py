"""Compile every Triton kernel for an NVIDIA architecture without a GPU and report what ptxas
says of it: registers per thread, spill bytes, shared memory. Spills or a register count that
caps occupancy show up here before anyone times the kernels on a device.

    python -m compressmamba.eval.kernel_report                    # sm_90 (H100), N 4..128
    python -m compressmamba.eval.kernel_report --arch 80 --states 16,128 --warps 4
    python -m compressmamba.eval.kernel_report --launcher          # the warps the launchers pick

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

import triton  # noqa: E402
from compressmamba.kernels.conv1d import kernel as conv  # noqa: E402
from compressmamba.kernels.selective_scan import scan, step  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

FLAGS = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True)


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


def kernel_specs(states, dtype="fp32"):
    """(label, JITFunction, constexprs) for every kernel at every N (conv: width 4), at the block
    the launcher picks without autotuning (``scan.block_d``) for Mamba-130m's width."""
    for n in states:
        bd, bn = scan.block_d(n, 1536), triton.next_power_of_2(n)
        tile = dict(FLAGS, BLOCK_D=bd, BLOCK_N=bn)
        yield f"scan fwd N={n}", _jit(scan._fwd_kernel), dict(tile, CHUNK=64, STORE_CHUNKS=True)
        yield f"scan bwd N={n}", _jit(scan._bwd_kernel), dict(tile, CHUNK=64, HAS_DLAST=False, ATOMIC_BC=True)
        yield f"decode step N={n}", _jit(step._step_kernel), tile
    conv_flags = dict(W=4, HAS_BIAS=True, SILU=True, BLOCK_D=conv.BLOCK_D, BLOCK_L=conv.BLOCK_L)
    yield "conv1d fwd W=4", _jit(conv._conv_fwd_kernel), conv_flags
    yield "conv1d bwd W=4", _jit(conv._conv_bwd_kernel), conv_flags


def launcher_warps(label: str, constexprs: dict) -> int:
    """The warps a launcher uses where it does not autotune (deterministic backward, decode step,
    conv with one config)."""
    if label.startswith("conv1d"):
        return 4
    return scan.fixed_warps(constexprs["BLOCK_D"], constexprs["BLOCK_N"])


def _signature(fn: JITFunction, constexprs: dict, dtype: str) -> dict:
    """Pointers of the input dtype for u/x/z/B/C-like data, fp32 for the rest, i32 scalars."""
    data = {"u_ptr", "dt_ptr", "B_ptr", "C_ptr", "z_ptr", "x_ptr", "dy_ptr", "dout_ptr"}
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = f"*{dtype}" if name in data else "*fp32"
        else:
            sig[name] = "i32"
    return sig


def compile_report(fn: JITFunction, constexprs: dict, arch: int, num_warps: int, dtype: str = "fp32") -> dict:
    """Compile to PTX with Triton, assemble with ptxas -v, return registers/spills/shared bytes."""
    src = ASTSource(fn=fn, signature=_signature(fn, constexprs, dtype), constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "k.ptx"
        ptx.write_text(compiled.asm["ptx"])
        sm = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        cmd = [str(_ptxas()), f"-arch={sm}", "-v", str(ptx), "-o", str(Path(tmp) / "k.cubin")]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"ptxas failed ({res.returncode}): {res.stderr.strip()[:500]}")
        log = res.stderr
        sass = subprocess.run(
            [str(_ptxas().parent / "cuobjdump"), "-sass", str(Path(tmp) / "k.cubin")], capture_output=True, text=True
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
    """The innermost hot loop of a kernel's SASS: the longest span closed by a backward branch.
    Its instruction count bounds the issue cost of one step (per thread); barriers (BAR) in it
    mean a per-step layout conversion through shared memory."""
    ins = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    best = None
    for addr, text in ins:
        m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) < addr:
            body = [t for a, t in ins if int(m.group(1), 16) <= a <= addr]
            if best is None or len(body) > len(best):
                best = body
    if best is None:
        return dict(loop_instructions=0, loop_barriers=0, loop_mufu=0)
    ops = [re.sub(r"^@!?U?P\w+\s+", "", t).split()[0] for t in best]
    return dict(
        loop_instructions=len(best),
        loop_barriers=sum(op.startswith("BAR") for op in ops),
        loop_mufu=sum(op.startswith("MUFU") for op in ops),
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90, help="compute capability x10: 80 (A100), 90 (H100/H200)")
    p.add_argument("--states", type=lambda s: [int(x) for x in s.split(",")], default=[4, 16, 64, 128])
    p.add_argument("--warps", type=lambda s: [int(x) for x in s.split(",")], default=[2, 4, 8])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--launcher", action="store_true", help="only the warps the launchers use without autotuning")
    args = p.parse_args(argv)
    print(f"Triton {triton.__version__}, sm_{args.arch}, inputs {args.dtype} (dim 1536 for BLOCK_D)")
    print(
        "| kernel | tile | warps | registers | spill stores B | spill loads B | shared B "
        "| loop instr | instr per element-step | loop MUFU | loop barriers |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for label, fn, constexprs in kernel_specs(args.states, args.dtype):
        tile = "x".join(str(constexprs[k]) for k in ("BLOCK_D", "BLOCK_N", "BLOCK_L") if k in constexprs)
        for w in [launcher_warps(label, constexprs)] if args.launcher else args.warps:
            r = compile_report(fn, constexprs, args.arch, w, args.dtype)
            rows.append((label, w, r))
            cells = f"{r['registers']} | {r['spill_stores']} | {r['spill_loads']} | {r['shared']}"
            loop = "— | — | — | —"
            if r["loop_instructions"] and "BLOCK_N" in constexprs:  # the scan kernels: one step per iteration
                per_thread = max(1, constexprs["BLOCK_D"] * constexprs["BLOCK_N"] // (32 * w))
                per_el = r["loop_instructions"] / per_thread
                loop = f"{r['loop_instructions']} | {per_el:.0f} | {r['loop_mufu']} | {r['loop_barriers']}"
            print(f"| {label} | {tile} | {w} | {cells} | {loop} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
