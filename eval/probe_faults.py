"""Bad inputs and faults, tried as a careful user would (issue 25's probe, kept in the repository).

Every case runs the command line in a subprocess against the demo recipes with tiny settings (a
few steps, a small slice of the corpus) and classifies what it saw:

* **OK**: the bad input is refused (exit status nonzero) by one line that names what the case
  names (the key or file, often the value and the fix) and no Python traceback; or, where success
  is right, the command succeeds and leaves what it should (a finished run intact, a repair
  reported, an old run cleared before a new one).
* **BAD**: anything else: a bad input accepted in silence, a raw traceback, a finished run
  destroyed, a NaN carried on, a command that hangs.

    python -m compressmamba.eval.probe_faults --out /tmp/probe      # every case; a table; exit 1 on BAD
    python -m compressmamba.eval.probe_faults --out /tmp/probe --cases expand_abc,fp16_cpu
    python -m compressmamba.eval.probe_faults --list

Everything a case writes (run folders, the token stores of the tiny corpora) stays under ``--out``
(``COMPRESSMAMBA_CACHE`` points there), each case in its own folder; one finished run and one
token store are built once and copied for the cases that damage them.

The machinery (the registry, the subprocess runner, classification, the table) is in ``probe_core.py``;
the cases, grouped by area, are in ``probe_cases_*.py``, imported below in the order they run and list.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from compressmamba.eval.probe_core import (
    CASE_TIMEOUT_S,
    CASES,
    LM,
    SMNIST,
    TINY_LM,
    TINY_SMNIST,
    Case,
    Outcome,
    Probe,
    Result,
    case,
    classify,
    machine,
    message_line,
    run_case,
    table,
)

# the case modules, grouped by area; importing one registers its cases in CASES, so this order is the
# order the cases run and list
CASE_MODULES = (
    "compressmamba.eval.probe_cases_runs",  # run folders, resume, checkpoints
    "compressmamba.eval.probe_cases_convert",  # compress and convert
    "compressmamba.eval.probe_cases_data",  # the token store, prepare-data
    "compressmamba.eval.probe_cases_recipes",  # recipes, overrides, train/study arguments, data files
    "compressmamba.eval.probe_cases_training",  # divergence, SIGKILL then resume, sMNIST, evaluate
)
for _module in CASE_MODULES:
    importlib.import_module(_module)

__all__ = [
    "CASE_TIMEOUT_S",
    "CASES",
    "CASE_MODULES",
    "LM",
    "SMNIST",
    "TINY_LM",
    "TINY_SMNIST",
    "Case",
    "Outcome",
    "Probe",
    "Result",
    "case",
    "classify",
    "machine",
    "main",
    "message_line",
    "run_case",
    "table",
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="a folder for the cases' files (created; reused fixtures are kept)")
    p.add_argument("--cases", help="comma-separated case names (default: all)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    args = p.parse_args(argv)
    by_name = {c.name: c for c in CASES}
    if args.list:
        for c in CASES:
            print(f"{c.name:32} {c.expect:9} {c.what}")
        return 0
    if args.out is None:
        p.error("--out DIR is required")
    chosen = CASES
    if args.cases:
        names = [n.strip() for n in args.cases.split(",") if n.strip()]
        unknown = [n for n in names if n not in by_name]
        if unknown:
            p.error(f"--cases: unknown case(s) {unknown}; --list shows them")
        chosen = [by_name[n] for n in names]
    args.out.mkdir(parents=True, exist_ok=True)
    pr = Probe(args.out.resolve())
    results = []
    for c in chosen:
        r = run_case(pr, c)
        print(f"{r.outcome:3} {r.case} ({r.seconds:.1f} s){': ' + r.why if r.why else ''}", file=sys.stderr, flush=True)
        results.append(r)
    text = table(results)
    print(text)
    (args.out / "table.md").write_text(f"{machine()}\n\n{text}\n")
    (args.out / "results.json").write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return 1 if any(r.outcome == "BAD" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
