"""The ``compressmamba`` command line. Each subcommand is a small function over the library."""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__
from .run_paths import LAST_CHECKPOINT


def _cmd_train(args) -> int:
    from .training import Trainer, load_recipe
    from .training.config import parse_seeds

    seeds = parse_seeds(args.seeds) if args.seeds else [None]
    for seed in seeds:
        overrides = list(args.overrides)
        if seed is not None:
            overrides.append(f"seed={seed}")
        recipe = load_recipe(args.recipe, overrides)
        if seed is not None and len(seeds) > 1 and not any(o.startswith("out_dir=") for o in args.overrides):
            recipe.out_dir = None  # one folder per seed
        trainer = Trainer(
            recipe, resume=args.resume, allow_recipe_change=args.allow_recipe_change, overwrite=args.overwrite
        )
        summary = trainer.fit()
        if trainer.accelerator.is_main_process and not recipe.train.progress:
            print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compressmamba", description="In-training compression of state-space models.")
    p.add_argument("--version", action="version", version=f"compressmamba {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train a recipe (YAML) with in-training compression",
        description="Train RECIPE.yaml; override any key with dotted key=value "
        "(e.g. reduction.tau=0.02 train.steps=500). Works under `accelerate launch`.",
    )
    t.add_argument("recipe", help="a YAML file, or a shipped recipe's name (`compressmamba recipes` lists them)")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=500")
    t.add_argument("--resume", metavar="RUN_DIR", help=f"resume from RUN_DIR/{LAST_CHECKPOINT}")
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in the run folder (its files are removed first); without it, or --resume, "
        "a folder holding a run is refused",
    )
    t.add_argument(
        "--allow-recipe-change",
        action="store_true",
        help="with --resume: continue under a recipe that differs from the checkpoint's (e.g. more train.steps); "
        "the change is recorded in metrics.jsonl",
    )
    t.add_argument("--seeds", help="seeds, one run each: comma-separated or ranges (e.g. 0,1,2 or 0-4)")
    t.set_defaults(func=_cmd_train)

    from . import compress, env, evaluate, recipe_index

    compress.register(sub)
    evaluate.register(sub)
    env.register(sub)
    recipe_index.register(sub)
    from .eval import aggregate

    aggregate.register(sub)
    from . import prepare

    prepare.register(sub)
    return p


def _requested_cpu_processes() -> int:
    """``accelerate launch --cpu`` asked for N processes (its simple launcher starts one): N,
    with the FSDP environment its config file asks for set for the ranks. cpu_launch.py reads
    the request off the launcher's command line (``/proc/<ppid>/cmdline``, the only place N is
    written) and says why; ``torchrun --nproc_per_node N -m compressmamba train ...`` (README
    "Training") needs none of this."""
    from .cpu_launch import requested_cpu_ranks

    n, env = requested_cpu_ranks()
    os.environ.update(env)
    return n


def _spawn_cpu_workers(n: int, argv: list[str]) -> int:
    """Run ``n`` CPU ranks with torch's elastic launcher (gloo); the Trainer sees WORLD_SIZE."""
    from torch.distributed.run import main as torchrun

    print(f"compressmamba: starting {n} CPU processes (torch.distributed, gloo)", file=sys.stderr)
    torchrun(["--standalone", "--nproc_per_node", str(n), "-m", "compressmamba", *argv])
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    n = _requested_cpu_processes()
    if n > 1:
        return _spawn_cpu_workers(n, argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # options and key=value overrides in any order (`train RECIPE --resume DIR key=value`)
    if extra and args.command == "train" and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides, extra = [*args.overrides, *extra], []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args) or 0
    except (ValueError, OSError, FloatingPointError) as e:  # OSError: a failed checkpoint write, a busy run folder
        print(f"compressmamba {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
