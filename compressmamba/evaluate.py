"""``compressmamba evaluate``: a language model on EleutherAI's lm-evaluation-harness tasks, alone
or side by side with another (``--compare``), e.g. a pretrained model against its cut copy.

MODEL is a run folder (its final ``model/``, else its last checkpoint), a saved model folder of any
family :func:`compressmamba.models.load_pretrained` reads (per-layer N included) or a hub id. The
tokenizer is the folder's own; a byte-level model (vocabulary 256, no tokenizer files: our
byte-level runs save none) gets :func:`byte_tokenizer`; ``--tokenizer`` overrides either.

lm-eval is an optional extra (``pip install 'compressmamba[eval]'``), imported only here and in
:mod:`compressmamba.harness` (which registers the ``compressmamba`` model type with it). Outputs in
``--out``: lm-eval's results JSON per model and ``summary.md``, one table (value ± lm-eval's
standard error; with ``--compare`` both models and the difference).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from .inputs import INSTALL_HINT, byte_tokenizer, load_for_eval, load_tokenizer, require_lm_eval

__all__ = [
    "INSTALL_HINT",
    "byte_tokenizer",
    "check_eval_options",
    "evaluate_and_report",
    "load_for_eval",
    "load_tokenizer",
    "markdown_table",
    "parse_tasks",
    "require_lm_eval",
    "run_tasks",
    "score_rows",
    "task_manager",
    "unreachable_dataset_message",
]


# --- running -------------------------------------------------------------------------------------
def task_manager(tasks: list[str], include_path: str | None = None, include_defaults: bool = True):
    """lm-eval's TaskManager (indexing its built-in tasks takes ~10 s), after checking ``tasks``."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path, include_defaults=include_defaults)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(
            f"--tasks: unknown task(s) {unknown}; expected names lm-eval knows (lm_eval ls tasks), "
            "or give --include-path with their YAML"
        )
    return manager


def run_tasks(
    model: str,
    tasks: list[str],
    *,
    include_path: str | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    device: str | None = None,
    tokenizer: str | None = None,
    log_samples: bool = False,
    include_defaults: bool = True,
    manager=None,
) -> dict:
    """lm-eval's ``simple_evaluate`` of MODEL on ``tasks``; returns its results dict (with
    ``config.compressmamba_model``: MODEL and its state sizes)."""
    import lm_eval

    from .harness import CompressMambaLM

    manager = manager or task_manager(tasks, include_path, include_defaults)
    device = device or ("cuda" if _cuda() else "cpu")
    lm = CompressMambaLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    try:
        res = lm_eval.simple_evaluate(
            model=lm, tasks=tasks, limit=limit, task_manager=manager, log_samples=log_samples
        )
    except OSError as e:  # ConnectionError: a hub dataset that is neither cached nor reachable (offline)
        raise ValueError(unreachable_dataset_message(e, tasks, manager)) from None
    res.setdefault("config", {})["compressmamba_model"] = {"model": model, "state_sizes": lm.model.state_sizes}
    return res


def unreachable_dataset_message(error: OSError, tasks: list[str], manager) -> str:
    """One line for a task whose dataset could not be read (not cached, hub unreachable): the
    task, its dataset, and ``--include-path`` for tasks over local files."""
    index = getattr(manager, "task_index", {}) or {}
    paths = {}
    for t in tasks:
        entry = index.get(t)
        cfg = getattr(entry, "cfg", None) or (entry.get("cfg") if isinstance(entry, dict) else None) or {}
        paths[t] = cfg.get("dataset_path")
    named = [t for t in tasks if paths[t] and str(paths[t]) in str(error)] or tasks
    which = ", ".join(f"{t} (dataset {paths[t] or 'unknown'})" for t in named)
    reason = " ".join(str(error).split())[:200]
    return (
        f"--tasks: {which} could not be read: not in the local Hugging Face cache and the hub is not reachable "
        f"({reason}); run once with network access to cache it, or evaluate local tasks with --include-path "
        "(a folder of task YAML files over local data)"
    )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --- reporting -----------------------------------------------------------------------------------
def score_rows(results: dict) -> dict[tuple[str, str], tuple[float, float | None]]:
    """(task, metric) → (value, standard error or None) from lm-eval's ``results["results"]``;
    the metric keeps lm-eval's filter suffix when it is not ``none`` (``exact_match,strict``)."""
    rows = {}
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            name, _, filt = key.partition(",")
            if name in ("alias", "sample_len") or name.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            err = metrics.get(f"{name}_stderr,{filt}" if filt else f"{name}_stderr")
            err = float(err) if isinstance(err, (int, float)) and math.isfinite(err) else None
            rows[(task, name if filt in ("", "none") else f"{name},{filt}")] = (float(value), err)
    return rows


def _cell(v: tuple[float, float | None] | None) -> str:
    if v is None:
        return "-"
    return f"{v[0]:.4f} ± {v[1]:.4f}" if v[1] is not None else f"{v[0]:.4f}"


def markdown_table(named: dict[str, dict]) -> str:
    """One table: a row per (task, metric), a column per model (value ± standard error); with two
    models a last column holds the second minus the first."""
    labels = list(named)
    scores = {k: score_rows(r) for k, r in named.items()}
    keys = list(dict.fromkeys(k for s in scores.values() for k in s))
    head = ["task", "metric", *labels] + (["difference"] if len(labels) == 2 else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        cells = [_cell(scores[lb].get(key)) for lb in labels]
        if len(labels) == 2:
            a, b = (scores[lb].get(key) for lb in labels)
            cells.append(f"{b[0] - a[0]:+.4f}" if a and b else "-")
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(out: str | Path, named: dict[str, dict], files: dict[str, str]) -> Path:
    """``out/<file>`` per model (lm-eval's results, JSON) and ``out/summary.md``; returns the summary's path."""
    from .atomic import atomic_write_text
    from .training.metrics import write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for label, res in named.items():
        write_json(out / files[label], json.loads(json.dumps(res, default=str)))
    text = "# lm-evaluation-harness\n\n" + "\n".join(f"- {lb}: `{files[lb]}`" for lb in named) + "\n\n"
    atomic_write_text(out / "summary.md", text + markdown_table(named))
    return out / "summary.md"


def evaluate_and_report(models: list[tuple[str, str, str | None]], tasks: list[str], out: str | Path, **kw) -> str:
    """Run ``tasks`` on each ``(label, MODEL, tokenizer or None)``, write the outputs (the first
    model's results to ``results.json``, the second's to ``results_compare.json``) and return the
    table."""
    named, files = {}, {}
    manager = task_manager(tasks, kw.get("include_path"))
    for i, (label, spec, tok) in enumerate(models):
        label = label if label not in named else f"{label} (2)"
        named[label] = run_tasks(spec, tasks, tokenizer=tok, manager=manager, **kw)
        files[label] = "results.json" if i == 0 else "results_compare.json"
    path = write_outputs(out, named, files)
    print(f"wrote {path.parent}/ ({', '.join(files.values())}, summary.md)")
    return markdown_table(named)


def parse_tasks(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    if not tasks:
        raise ValueError(f"--tasks {text!r}: expected comma-separated task names, e.g. arc_easy,piqa")
    return tasks


def check_eval_options(args, batch_flag: str = "--batch-size") -> None:
    """lm-eval installed and the evaluation options in range, before any model is loaded."""
    try:
        require_lm_eval()
    except ImportError as e:
        raise ValueError(str(e)) from None
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit {args.limit}: expected a positive number of documents per task")
    if args.eval_batch_size < 1:
        raise ValueError(f"{batch_flag} {args.eval_batch_size}: expected a positive integer")
    if args.device is not None:
        import torch

        try:
            torch.device(args.device)
        except RuntimeError:
            raise ValueError(f"--device {args.device!r}: expected cpu, cuda, cuda:N or mps") from None
    if args.include_path and not Path(args.include_path).is_dir():
        raise FileNotFoundError(f"--include-path {args.include_path}: expected a folder of task YAML files")


def _cmd_evaluate(args) -> int:
    check_eval_options(args)
    models = [(args.model, args.model, args.tokenizer)]
    if args.compare:
        models.append((args.compare, args.compare, args.tokenizer))
    table = evaluate_and_report(
        models,
        parse_tasks(args.tasks),
        args.eval_out,
        include_path=args.include_path,
        limit=args.limit,
        batch_size=args.eval_batch_size,
        device=args.device,
    )
    print(table, end="")
    return 0


def add_eval_options(p: argparse.ArgumentParser, out_flag: str = "--out", batch_flag: str = "--batch-size") -> None:
    """The options ``evaluate`` shares with ``compress --evaluate`` (where --out and --batch-size
    are taken, hence the flags' names)."""
    p.add_argument("--include-path", help="a folder of lm-eval task YAML files (local tasks), as lm_eval's own option")
    p.add_argument("--limit", type=int, help="at most this many documents per task (a quick look, not a score)")
    p.add_argument(batch_flag, dest="eval_batch_size", type=int, default=1, help="lm-eval batch size")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument(out_flag, dest="eval_out", default="lm_eval_results", help="folder for the results and summary.md")


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "evaluate",
        help="lm-evaluation-harness tasks on a model (optionally against another)",
        description="Evaluate MODEL (a run folder, a model folder or a hub id) on lm-evaluation-harness "
        "TASKS; writes lm-eval's results JSON and summary.md (one table, with standard errors). "
        "Needs pip install 'compressmamba[eval]'.",
    )
    e.add_argument("model")
    e.add_argument("--tasks", required=True, help="comma-separated lm-eval task names, e.g. lambada_openai,piqa")
    e.add_argument("--compare", metavar="OTHER_MODEL", help="evaluate this model too and show both side by side")
    e.add_argument("--tokenizer", help="byte, a tokenizer.json, a folder or a hub name (default: the model's own)")
    add_eval_options(e)
    e.set_defaults(func=_cmd_evaluate)
