"""Which energy estimate picks the states to keep? Train a small byte-level Mamba on the Python
standard library, then cut every layer to the same size by each method and measure the rise in
validation loss (no retraining). Prints a markdown table (mean ± std over seeds).

    python -m compressmamba.eval.mamba_ablation --steps 300 --seeds 0,1,2 --keep 8,4
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from compressmamba.reduction import select_states
from compressmamba.training import Trainer, recipe_from_dict
from compressmamba.training.data import shard_batches

METHODS = ("hankel", "hankel_mean", "output")


def _recipe(args, seed, out):
    return {
        "name": "ablation",
        "seed": seed,
        "out_dir": out,
        "model": {"name": "mamba", "d_model": args.d_model, "n_layers": args.layers, "state_size": args.n},
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
def _energies(model, calib):
    layers = model.ssm_layers()
    for layer in layers:
        layer.start_stats()
    for b in calib:
        model(**b)
    stats = [layer.pop_stats() for layer in layers]
    return {m: [layer.energy(s, m) for layer, s in zip(layers, stats)] for m in METHODS}


def _cut(model, energies, keep, selection, gen):
    m = copy.deepcopy(model)
    for layer, e in zip(m.ssm_layers(), energies):
        layer.truncate_(select_states(e, keep, selection, gen))
    return m


def run(args) -> dict:
    results: dict[tuple[str, int], list[float]] = {}
    for seed in args.seeds:
        t0 = time.time()
        tr = Trainer(recipe_from_dict(_recipe(args, seed, f"{args.out}/seed{seed}")))
        tr.fit()
        model = tr.model.eval()
        val = list(shard_batches(tr.data.val, 8, 0, 1, args.val_batches))
        calib = [tr.batches.batch(10_000 + i) for i in range(args.calib_batches)]
        base = _val_loss(model, val)
        en = _energies(model, calib)
        for keep in args.keep:
            for m in METHODS:
                results.setdefault((m, keep), []).append(
                    _val_loss(_cut(model, en[m], keep, "largest", None), val) - base
                )
            gen = torch.Generator().manual_seed(seed)
            draws = [
                _val_loss(_cut(model, en["output"], keep, "random", gen), val) - base for _ in range(args.random_draws)
            ]
            results.setdefault(("random", keep), []).append(sum(draws) / len(draws))
            results.setdefault(("smallest", keep), []).append(
                _val_loss(_cut(model, en["output"], keep, "smallest", None), val) - base
            )
        print(f"seed {seed}: trained and cut in {time.time() - t0:.0f} s (val loss {base:.4f})", flush=True)
    return results


def table(results, args) -> str:
    keeps = args.keep
    head = "| method | " + " | ".join(f"keep {k}/{args.n}" for k in keeps) + " |"
    lines = [head, "|---|" + "---|" * len(keeps)]
    for m in (*METHODS, "random", "smallest"):
        cells = []
        for k in keeps:
            v = results[(m, k)]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.mean(v):.4f} ± {sd:.4f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    p.add_argument("--keep", type=lambda s: [int(x) for x in s.split(",")], default=[8, 4])
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--val-batches", type=int, default=16)
    p.add_argument("--calib-batches", type=int, default=4)
    p.add_argument("--random-draws", type=int, default=5)
    p.add_argument("--max-bytes", type=int, default=4_000_000, help="bytes of stdlib source to read")
    p.add_argument("--out", default="runs/ablation")
    args = p.parse_args(argv)
    for k in args.keep:
        if not 1 <= k < args.n:
            raise ValueError(f"--keep: {k} must be in [1, n={args.n})")
    res = run(args)
    print(
        f"\nRise in validation loss (nats/byte) after cutting every layer to k states, "
        f"mean ± std over seeds {args.seeds}:\n"
    )
    print(table(res, args))
    return res


if __name__ == "__main__":
    main()
