"""Which energy estimate picks the states to keep? Train a small byte-level Mamba (``--model
mamba``) or Mamba-2 (``--model mamba2``: G groups of N states, every group keeps the same count k,
each its own states) on the Python standard library, then cut every layer to k states by each
method and measure the rise in validation loss: right after the cut, and (``--finetune STEPS``)
after a short fine-tune, against the uncut model fine-tuned on the same batches. For Mamba-2 the
methods include ``balanced`` (each group's leading k balanced coordinates, against selecting k
of its states). Prints a markdown table (mean ± std over seeds).

    python -m compressmamba.eval.mamba_ablation --steps 300 --seeds 0,1,2 --keep 8,4
    python -m compressmamba.eval.mamba_ablation --model mamba2 --n 64 --n-groups 2 --keep 16,4 --finetune 50
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from compressmamba.reduction import select_states
from compressmamba.reduction.mamba import ENERGY_METHODS
from compressmamba.training import Trainer, recipe_from_dict
from compressmamba.training.data import shard_batches
from compressmamba.training.optim import build_optimizer

METHODS = ENERGY_METHODS  # state selection by each energy estimate
RANDOM_ROWS = ("random", "smallest")  # selections the "output" energy orders


def methods(args) -> tuple[str, ...]:
    """The energy methods compared: Mamba-2 adds balanced truncation."""
    return (*METHODS, "balanced") if args.model == "mamba2" else tuple(METHODS)


def _model_cfg(args) -> dict:
    cfg = {"name": args.model, "d_model": args.d_model, "n_layers": args.layers, "state_size": args.n}
    if args.model == "mamba2":
        cfg.update(head_dim=args.head_dim, n_groups=args.n_groups, chunk_size=args.seq_len)
    return cfg


def _recipe(args, seed, out):
    return {
        "name": "ablation",
        "seed": seed,
        "out_dir": out,
        "model": _model_cfg(args),
        "data": {"name": "text_lm", "corpus": "python_stdlib", "seq_len": args.seq_len, "max_bytes": args.max_bytes},
        "optim": {"lr": 3e-3, "schedule": "cosine", "warmup_frac": 0.05, "grad_clip": 1.0, "weight_decay": 0.1},
        "train": {"steps": args.steps, "batch_size": 8, "eval_every": args.steps, "eval_batches": 4, "progress": False},
        "reduction": {"mode": "none"},
    }


@torch.no_grad()
def _val_loss(model, batches):
    model.eval()
    return sum(model(**b).loss.item() for b in batches) / len(batches)


@torch.no_grad()
def _stats(model, calib) -> list[dict]:
    """Each layer's calibration statistics over ``calib``."""
    layers = model.ssm_layers()
    for layer in layers:
        layer.start_stats()
    for b in calib:
        model(**b)
    return [layer.pop_stats() for layer in layers]


def keep_indices(energy, keep: int, selection: str, gen) -> torch.Tensor:
    """Indices of the ``keep`` states to keep: (keep,) from energy (n,), or (G, keep) from energy
    (G, n), each group choosing its own states by ``selection`` (same count in every group)."""
    e = torch.as_tensor(energy)
    if e.dim() == 1:
        return select_states(e, keep, selection, gen)
    return torch.stack([select_states(row, keep, selection, gen) for row in e])


@torch.no_grad()
def _cut(model, stats, method, keep, selection, gen):
    """A copy of ``model`` with every layer cut to ``keep`` states (per group) chosen by
    ``selection`` on ``method``'s energy, measured on the copy's own layer: ``balanced`` makes the
    layer's next ``truncate_`` keep balanced coordinates."""
    m = copy.deepcopy(model)
    for layer, s in zip(m.ssm_layers(), stats):
        layer.truncate_(keep_indices(layer.energy(s, method), keep, selection, gen))
    return m


def _finetune(model, batches, recipe, lr):
    """A copy of ``model`` trained on ``batches`` with AdamW (the recipe's parameter groups and
    weight decay) at constant ``lr``, gradients clipped as in the recipe."""
    m = copy.deepcopy(model).train()
    opt = build_optimizer(m, recipe.optim)
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    for b in batches:
        loss = m(**b).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), recipe.optim.grad_clip)
        opt.step()
    return m.eval()


class _Scorer:
    """Rise in validation loss of a cut model over the uncut one, right after the cut and (with
    ``ft_batches``) after both are fine-tuned on the same batches."""

    def __init__(self, model, val, ft_batches, recipe, lr):
        self.val, self.ft, self.recipe, self.lr = val, ft_batches, recipe, lr
        self.base = _val_loss(model, val)
        self.base_ft = _val_loss(_finetune(model, ft_batches, recipe, lr), val) if ft_batches else None

    def __call__(self, cut_model) -> tuple[float, float | None]:
        before = _val_loss(cut_model, self.val) - self.base
        if not self.ft:
            return before, None
        return before, _val_loss(_finetune(cut_model, self.ft, self.recipe, self.lr), self.val) - self.base_ft


def _record(results, key, scores):
    """Append the mean over ``scores`` [(before, after)] to results[key] and results[key + ("ft",)]."""
    results.setdefault(key, []).append(sum(s[0] for s in scores) / len(scores))
    if scores[0][1] is not None:
        results.setdefault((*key, "ft"), []).append(sum(s[1] for s in scores) / len(scores))


def _one_seed(args, seed, results) -> float:
    tr = Trainer(recipe_from_dict(_recipe(args, seed, f"{args.out}/seed{seed}")), overwrite=True)  # a rerun replaces
    tr.fit()
    model = tr.model.eval()
    val = list(shard_batches(tr.data.val, 8, 0, 1, args.val_batches))
    calib = [tr.batches.batch(10_000 + i) for i in range(args.calib_batches)]
    ft = [tr.batches.batch(args.steps + i) for i in range(args.finetune)]  # the batches after training's
    score = _Scorer(model, val, ft, tr.recipe, args.finetune_lr)
    stats = _stats(model, calib)
    for keep in args.keep:
        for m in methods(args):
            _record(results, (m, keep), [score(_cut(model, stats, m, keep, "largest", None))])
        gen = torch.Generator().manual_seed(seed)
        draws = [score(_cut(model, stats, "output", keep, "random", gen)) for _ in range(args.random_draws)]
        _record(results, ("random", keep), draws)
        _record(results, ("smallest", keep), [score(_cut(model, stats, "output", keep, "smallest", None))])
    return score.base


def run(args) -> dict:
    """results[(method, keep)]: one rise per seed right after the cut; with ``--finetune``, also
    results[(method, keep, "ft")]: the rise after the fine-tune."""
    results: dict[tuple, list[float]] = {}
    for seed in args.seeds:
        t0 = time.time()
        base = _one_seed(args, seed, results)
        print(f"seed {seed}: trained, cut and fine-tuned in {time.time() - t0:.0f} s (val loss {base:.4f})", flush=True)
        if len(args.seeds) > 1:
            print(f"seeds so far {args.seeds[: args.seeds.index(seed) + 1]}:\n{table(results, args)}\n", flush=True)
    return results


def _cell(v) -> str:
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.mean(v):.4f} ± {sd:.4f}"


def table(results, args) -> str:
    per = " per group" if args.model == "mamba2" else ""
    cols = [((k,), f"keep {k}/{args.n}{per}") for k in args.keep]
    if args.finetune:
        cols = [c for k in args.keep for c in (((k,), f"keep {k}/{args.n}{per}"), ((k, "ft"), f"+ {args.finetune} ft"))]
    lines = ["| method | " + " | ".join(c[1] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for m in (*methods(args), *RANDOM_ROWS):
        lines.append(f"| {m} | " + " | ".join(_cell(results[(m, *c[0])]) for c in cols) + " |")
    return "\n".join(lines)


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",")]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("mamba", "mamba2"), default="mamba")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    p.add_argument("--keep", type=_ints, default=[8, 4])
    p.add_argument("--n", type=int, default=16, help="states per layer (Mamba-2: per group)")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--head-dim", type=int, default=16, help="Mamba-2 only")
    p.add_argument("--n-groups", type=int, default=2, help="Mamba-2 only")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--val-batches", type=int, default=16)
    p.add_argument("--calib-batches", type=int, default=4)
    p.add_argument("--random-draws", type=int, default=5)
    p.add_argument("--finetune", type=int, default=0, metavar="STEPS", help="fine-tune steps after each cut (0: none)")
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--max-bytes", type=int, default=4_000_000, help="bytes of stdlib source to read")
    p.add_argument("--out", default="runs/ablation")
    return p


def _check(args) -> None:
    for k in args.keep:
        if not 1 <= k < args.n:
            raise ValueError(f"--keep: {k} must be in [1, n={args.n})")
    if args.finetune < 0:
        raise ValueError(f"--finetune: {args.finetune} must be >= 0 steps")
    if args.random_draws < 1:
        raise ValueError(f"--random-draws: {args.random_draws} must be >= 1")


def main(argv=None):
    args = _parser().parse_args(argv)
    _check(args)
    res = run(args)
    ft = f"; '+ {args.finetune} ft': after {args.finetune} fine-tune steps" if args.finetune else ""
    print(
        f"\nRise in validation loss (nats/byte) after cutting every layer to k states{ft}, "
        f"mean ± std over seeds {args.seeds}:\n"
    )
    print(table(res, args))
    return res


if __name__ == "__main__":
    main()
