"""Start-up times, as whole processes: ``import compressmamba`` against ``import torch, transformers``
on the same machine, the import a user's ``AutoModelForCausalLM`` brings with it, and the light
command-line calls (``--version``, ``--help``, ``recipes``, a subcommand's ``--help``).

Each command runs ``--runs`` times after one warm-up, the commands interleaved round by round so
that drifting load falls on all alike; the table gives each one's median and min wall seconds
and its median ratio to the reference (``import torch, transformers``) taken round by round.

    python -m compressmamba.eval.bench_startup --runs 7

Results: docs/benchmarks.md "Start-up and install size".
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REFERENCE = "import torch, transformers"


def commands() -> list[tuple[str, list[str]]]:
    py = sys.executable
    script = shutil.which("compressmamba", path=str(Path(py).parent)) or shutil.which("compressmamba")
    cli = [script] if script else [py, "-m", "compressmamba"]  # the console script a user types
    return [
        (REFERENCE, [py, "-c", REFERENCE]),
        ("import compressmamba", [py, "-c", "import compressmamba"]),
        (
            "import torch + AutoModelForCausalLM",
            [py, "-c", "import torch; from transformers import AutoModelForCausalLM"],
        ),
        (
            "import compressmamba + AutoModelForCausalLM (registers our types)",
            [py, "-c", "import compressmamba; from transformers import AutoModelForCausalLM"],
        ),
        ("compressmamba --version", [*cli, "--version"]),
        ("compressmamba --help", [*cli, "--help"]),
        ("compressmamba recipes", [*cli, "recipes"]),
        ("compressmamba train --help", [*cli, "train", "--help"]),
    ]


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def measure(cmds, runs: int) -> dict[str, list[float]]:
    for _, cmd in cmds:  # warm-up: the file cache, .pyc files
        wall(cmd)
    times = {name: [] for name, _ in cmds}
    for _ in range(runs):
        for name, cmd in cmds:
            times[name].append(wall(cmd))
    return times


def table(times: dict[str, list[float]]) -> str:
    ref = times[REFERENCE]
    rows = [
        "| command | median s | min s | ratio to `import torch, transformers` (median of rounds) |",
        "|---|---|---|---|",
    ]
    for name, ts in times.items():
        ratio = statistics.median(t / r for t, r in zip(ts, ref))
        rows.append(f"| `{name}` | {statistics.median(ts):.2f} | {min(ts):.2f} | {ratio:.2f} |")
    return "\n".join(rows) + "\n"


def versions() -> str:
    from importlib.metadata import version

    names = ("torch", "transformers", "compressmamba")
    return ", ".join(f"{n} {version(n)}" for n in names) + f", Python {platform.python_version()}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="timed runs of each command (after one warm-up)")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error(f"--runs {args.runs}: expected a positive integer")
    times = measure(commands(), args.runs)
    print(f"{platform.machine()}, {platform.system()}; {versions()}; {args.runs} runs each\n")
    print(table(times), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
