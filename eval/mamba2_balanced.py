"""Mamba-2: balanced truncation against state selection at the same state size. Train the
stdlib demo Mamba-2 (recipes/lm/stdlib_mamba2_demo.yaml, shorter), then cut every layer to r
states per group by each method and measure the rise in validation loss, without retraining and
(with ``--finetune K``) after K steps of AdamW on the cut model. Prints a markdown table
(mean ± std over seeds).

    python -m compressmamba.eval.mamba2_balanced --steps 300 --seeds 0,1,2 --keep 16,8,4
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from compressmamba.training import Trainer, recipe_from_dict
from compressmamba.training.config import read_recipe
from compressmamba.training.data import shard_batches

METHODS = ("output", "hankel", "balanced")
RECIPE = "lm/stdlib_mamba2_demo"


def _recipe(args, seed: int, out: str) -> dict:
    r = read_recipe(args.recipe)
    r.update(seed=seed, out_dir=out, reduction={"mode": "none"})
    r["model"]["d_model"] = args.d_model
    r["train"].update(steps=args.steps, eval_every=args.steps, eval_batches=4, progress=False)
    return r


@torch.no_grad()
def _val_loss(model, batches) -> float:
    model.eval()
    return sum(model(**b).loss.item() for b in batches) / len(batches)


@torch.no_grad()
def _cut(model, method: str, r: int, calib) -> None:
    """Every layer to r states per group by ``method``'s energy (largest r of each group)."""
    from compressmamba.training.cut import calibrate

    class _One:  # calibrate's accelerator: one process, no reduction
        device = torch.device("cpu")

        @staticmethod
        def reduce(t, reduction="sum"):
            return t

    layers = model.ssm_layers()
    for layer, s in zip(layers, calibrate(model, layers, calib, _One())):
        e = layer.energy(s, method)
        layer.truncate_(torch.sort(torch.topk(e, r, dim=1).indices, dim=1).values)


def _finetune(model, tr: Trainer, steps: int, lr: float) -> None:
    if steps <= 0:
        return
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for i in range(steps):
        opt.zero_grad()
        model(**tr.batches.batch(i, 0)).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


def run(args) -> dict:
    rows = {}  # (r, method) -> [rise per seed]
    for seed in args.seeds:
        t0 = time.time()
        tr = Trainer(recipe_from_dict(_recipe(args, seed, f"{args.out}/seed{seed}")))
        tr.fit()
        model = tr.model.cpu().eval()
        val = list(shard_batches(tr.data.val, 16, 0, 1, args.eval_batches))
        calib = [tr.batches.batch(10_000 + i, 0) for i in range(args.calib_batches)]
        base = _val_loss(model, val)
        print(f"seed {seed}: trained {args.steps} steps in {time.time() - t0:.0f}s, val loss {base:.4f}", flush=True)
        for r in args.keep:
            for method in METHODS:
                m = copy.deepcopy(model)
                _cut(m, method, r, calib)
                rise = _val_loss(m, val) - base
                _finetune(m, tr, args.finetune, args.ft_lr)
                tuned = _val_loss(m, val) - base if args.finetune else float("nan")
                rows.setdefault((r, method), []).append((rise, tuned))
                print(f"  keep {r}: {method:<9} rise {rise:.4f}  after fine-tune {tuned:.4f}", flush=True)
    return rows


def _fmt(v: list[float]) -> str:
    return f"{statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}" if len(v) > 1 else f"{v[0]:.4f}"


def table(rows: dict, n: int, finetune: int) -> str:
    head = f"| keep r / {n} | method | rise in val loss | rise after {finetune} fine-tune steps |"
    lines = [head, "|---|---|---|---|"]
    for (r, method), v in sorted(rows.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        tuned = _fmt([t for _, t in v]) if finetune else "—"
        lines.append(f"| {r} | {method} | {_fmt([x for x, _ in v])} | {tuned} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=RECIPE)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0])
    p.add_argument("--keep", type=lambda s: [int(x) for x in s.split(",")], default=[16, 8, 4])
    p.add_argument("--calib-batches", type=int, default=8)
    p.add_argument("--eval-batches", type=int, default=40)
    p.add_argument("--finetune", type=int, default=0, help="AdamW steps on each cut model (0: none)")
    p.add_argument("--ft-lr", type=float, default=1e-3)
    p.add_argument("--out", default="runs/mamba2_balanced")
    args = p.parse_args(argv)
    n = read_recipe(args.recipe)["model"]["state_size"]
    print(table(run(args), n, args.finetune))


if __name__ == "__main__":
    main()
