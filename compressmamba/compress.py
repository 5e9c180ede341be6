"""Post-hoc compression of a pretrained Mamba, and checkpoint conversion (``compressmamba
compress`` / ``compressmamba convert``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .inputs import load_any


def compress_model(
    model, calib_batches, tau: float | None, method: str | None = None, uniform: int | bool = False
):
    """Cut ``model`` in place over ``calib_batches``: by the τ rule, each layer to its own N; with
    ``uniform=True`` every layer to the largest N the rule chooses; with ``uniform=N`` (an int)
    every layer to its N highest-energy states per group. Returns the CutReport."""
    import torch
    from accelerate import Accelerator

    from .training.config import ReductionConfig
    from .training.cut import compression_event

    method = resolve_method(model, method)
    fixed = uniform if isinstance(uniform, int) and not isinstance(uniform, bool) else None
    if fixed is None and tau is None:
        raise ValueError("give --tau (the τ rule) or --uniform N (one state size for every layer)")
    cfg = ReductionConfig(
        mode="tolerance", tau=0.0 if tau is None else tau, method=method, calib_batches=len(calib_batches),
        uniform=bool(uniform),
    )  # fmt: skip
    if fixed is not None and fixed < 1:
        raise ValueError(f"--uniform {fixed}: expected a state size >= 1")
    plan = (lambda i, e: fixed) if fixed is not None else None
    acc = Accelerator(cpu=not torch.cuda.is_available())
    return compression_event(model, cfg, 0, calib_batches, acc, torch.Generator().manual_seed(0), plan=plan)


def _calib_batches(spec: str, tokenizer: str, seq_len: int, batch_size: int, n_batches: int):
    import torch
    from torch.utils.data import default_collate

    from .data.text import text_lm

    kw = (
        {"corpus": "python_stdlib"}
        if spec == "python_stdlib"
        else ({"files": spec} if any(ch in spec for ch in "*/.") or Path(spec).exists() else {"dataset": spec})
    )
    data = text_lm(**kw, tokenizer=tokenizer, seq_len=seq_len, val_fraction=0.05)
    n_need = n_batches * batch_size
    if len(data.train) < n_need:
        raise ValueError(
            f"calibration data holds {len(data.train)} sequences of {seq_len} tokens; "
            f"{n_batches} batches of {batch_size} need {n_need}: lower --calib-batches or --seq-len"
        )
    idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:n_need].tolist()
    return [
        default_collate([data.train[i] for i in idx[b * batch_size : (b + 1) * batch_size]]) for b in range(n_batches)
    ]


def _check_out_folder(what: str, path: str) -> None:
    """The folder a command writes a model into must be a folder or creatable as one (transformers'
    save_pretrained only logs a file in the way, writes nothing and returns)."""
    blocker = Path(path).expanduser()
    while not blocker.exists() and blocker != blocker.parent:
        blocker = blocker.parent
    if blocker.exists() and not blocker.is_dir():
        raise ValueError(f"{what} {path}: {blocker} is a file, not a folder; give a new folder for the model")


def _check_compress_options(args) -> None:
    """The numbers compress takes, checked before any model or data is read."""
    _check_out_folder("--out", args.out)
    if args.tau is None and args.uniform in (False, True):
        raise ValueError(
            "give --tau (the τ rule), --tau with --uniform, or --uniform N (one state size for every layer)"
        )
    if args.tau is not None and not 0 <= args.tau < 1:
        raise ValueError(f"--tau {args.tau}: expected the fraction of each layer's energy to discard, in [0, 1)")
    for flag, value in (
        ("--calib-batches", args.calib_batches),
        ("--batch-size", args.batch_size),
        ("--seq-len", args.seq_len),
    ):
        if value < 1:
            raise ValueError(f"{flag} {value}: expected a positive integer")


def _cmd_compress(args) -> int:
    _check_compress_options(args)
    if args.method == "balanced" and args.format == "transformers":
        raise ValueError(
            "--method balanced adds a state projection that plain transformers Mamba2 cannot express: "
            "use --format compressmamba"
        )
    if args.evaluate:
        from .evaluate import check_eval_options, parse_tasks

        parse_tasks(args.evaluate)
        try:
            check_eval_options(args, "--eval-batch-size")  # before the work, not after it
        except ValueError as e:
            raise ValueError(f"--evaluate: {e}") from None
    model = load_any(args.checkpoint)
    if args.tokenizer == "byte" and model.config.vocab_size < 256:
        raise ValueError(f"model vocabulary {model.config.vocab_size} < 256: give --tokenizer")
    batches = _calib_batches(args.calib, args.tokenizer, args.seq_len, args.batch_size, args.calib_batches)
    report = compress_model(model, batches, args.tau, args.method, uniform=args.uniform)
    print(f"{'layer':>5} {'old N':>6} {'new N':>6} {'energy kept':>12}")
    for i, (o, n, e) in enumerate(zip(report.old_sizes, report.new_sizes, report.energy_kept)):
        print(f"{i:>5} {o:>6} {n:>6} {e:>12.4f}")
    out = Path(args.out)
    from .models.loading import export_transformers

    if args.format == "transformers":
        export_transformers(model, out, uniform=args.uniform is not False)
    else:
        model.save_pretrained(out)
    if args.tokenizer != "byte":  # the folder evaluates and generates on its own (runs' model/ does the same)
        from .training.export import save_tokenizer

        save_tokenizer(args.tokenizer, out)
    print(f"saved {args.format} checkpoint to {out} (state sizes {model.state_sizes})")
    if args.evaluate:
        from .evaluate import evaluate_and_report, parse_tasks

        models = [("original", args.checkpoint, args.tokenizer), ("compressed", str(out), args.tokenizer)]
        opts = {"include_path": args.include_path, "limit": args.limit, "device": args.device}
        print(
            evaluate_and_report(
                models, parse_tasks(args.evaluate), args.eval_out, batch_size=args.eval_batch_size, **opts
            ),
            end="",
        )
    return 0


def _cmd_convert(args) -> int:
    _check_out_folder("DST", args.dst)
    model = load_any(args.src)
    from .models.loading import export_transformers

    if args.to == "transformers":
        export_transformers(model, args.dst)
    elif args.to == "mamba_ssm":
        from .models.mamba3 import export_mamba_ssm

        export_mamba_ssm(model, args.dst)
    else:
        model.save_pretrained(args.dst)
    print(f"wrote {args.to} checkpoint to {args.dst} (state sizes {model.state_sizes})")
    return 0


def resolve_method(model, method: str | None) -> str | None:
    """``method`` checked against the energy methods of ``model``'s family; None: the family's
    default (``ModelFamily.default_energy_method``). A model of no registered family: as given."""
    from .registry import family_of_model_type

    family = family_of_model_type(getattr(getattr(model, "config", None), "model_type", ""))
    if family is None:
        return method
    if method is None:
        return family.default_energy_method
    if method not in family.energy_methods:
        raise ValueError(
            f"--method {method!r}: expected one of {list(family.energy_methods)} for a {family.name} model"
        )
    return method


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "compress",
        help="compress a pretrained Mamba post hoc (calibrate, cut by tau)",
        description="Load CHECKPOINT (a compressmamba run folder, a transformers or mamba-ssm "
        "Mamba folder, or a hub id), estimate each state's energy on calibration text, cut by "
        "the tau rule, and save the smaller model for fine-tuning.",
    )
    c.add_argument("checkpoint")
    c.add_argument("--tau", type=float, help="fraction of energy a layer may discard, in [0, 1)")
    c.add_argument(
        "--uniform",
        nargs="?",
        const=True,
        default=False,
        type=int,
        metavar="N",
        help="one state size for every layer: N, or without N the largest the tau rule chooses "
        "(with --format transformers, a stock config at that N: the form stock runtimes save memory with)",
    )
    c.add_argument("--calib", default="python_stdlib", help="python_stdlib, a file glob, or a hub dataset name")
    c.add_argument("--tokenizer", default="byte", help="byte, a tokenizer.json, or a hub tokenizer name")
    c.add_argument(
        "--method",
        help="state energy (hankel, hankel_mean, output, balanced; default: the model family's, `compressmamba env` "
        "lists each family's methods); balanced (Mamba-2; Mamba-3: its unturned coordinates) keeps the best "
        "r-dimensional subspace per group through a state projection, which plain transformers and mamba-ssm "
        "formats cannot hold",
    )
    c.add_argument("--calib-batches", type=int, default=8)
    c.add_argument("--batch-size", type=int, default=4)
    c.add_argument("--seq-len", type=int, default=256)
    c.add_argument("--format", default="compressmamba", choices=["compressmamba", "transformers"])
    c.add_argument("--out", required=True)
    c.add_argument(
        "--evaluate",
        metavar="TASKS",
        help="then run these lm-evaluation-harness tasks on the original and the compressed model, side by side "
        "(pip install 'compressmamba[eval]')",
    )
    from .evaluate import add_eval_options

    add_eval_options(c, out_flag="--eval-out", batch_flag="--eval-batch-size")
    c.set_defaults(func=_cmd_compress)

    v = sub.add_parser(
        "convert",
        help="convert a Mamba checkpoint (ours, transformers, mamba-ssm)",
        description="Convert SRC to DST: compressmamba format (per-layer state sizes) or plain "
        "transformers MambaForCausalLM (state sizes zero-padded to the largest; outputs unchanged).",
    )
    v.add_argument("src")
    v.add_argument("dst")
    v.add_argument(
        "--to",
        default="compressmamba",
        choices=["compressmamba", "transformers", "mamba_ssm"],
        help="mamba_ssm: a MambaLMHeadModel folder (Mamba-3 models, one N in every layer)",
    )
    v.set_defaults(func=_cmd_convert)
