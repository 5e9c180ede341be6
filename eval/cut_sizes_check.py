"""Issue 34's check that the streamed statistics do not change the cuts of the shipped CPU recipes:
for each recipe, build its model (its seed), train it ``--steps`` AdamW steps on its own data so the
weights leave their initial values, then run the recipe's cut decision (its method and τ, over its
``calib_batches`` fixed batches) twice on copies of the same model: with the streamed statistics and
with reduction/reference.py's. Prints each layer's new sizes and kept energy both ways; exits 1 if
any size differs.

    python -m compressmamba.eval.cut_sizes_check
    python -m compressmamba.eval.cut_sizes_check --recipes mqar/mamba2 --steps 50

hybrid/granite_tiny_finetune cuts the model that hybrid/granite_tiny_pretrain trains; here its cut
(τ 0.05, 4 calibration batches, ``output``) runs on the pretrain recipe's model after ``--steps``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys

import torch
from torch.utils.data import default_collate

RECIPES = ("lm/stdlib_demo", "lm/stdlib_mamba2_demo", "mqar/mamba2", "hybrid/granite_tiny_finetune")


def _setup(name: str, steps: int):
    from compressmamba.registry import MODEL_INFO_KEYS, build_data, build_model
    from compressmamba.training import load_recipe

    recipe = load_recipe(name)
    model_recipe = load_recipe("hybrid/granite_tiny_pretrain") if name == "hybrid/granite_tiny_finetune" else recipe
    torch.manual_seed(recipe.seed)
    data = build_data(model_recipe.data)
    info = {k: v for k, v in data.info.items() if k in MODEL_INFO_KEYS}
    model = build_model(model_recipe.model, **info)
    bs = recipe.train.batch_size
    gen = torch.Generator().manual_seed(recipe.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.optim.lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(data.train), (bs,), generator=gen).tolist()
        batch = default_collate([data.train[i] for i in idx])
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    idx = torch.randperm(len(data.train), generator=gen)[: recipe.reduction.calib_batches * bs].tolist()
    calib = [default_collate([data.train[i] for i in idx[b * bs : (b + 1) * bs]]) for b in range(len(idx) // bs)]
    return recipe, model.eval(), calib


def _cut(model, calib, recipe, reference: bool):
    from compressmamba.eval.bench_cut import reference_stats

    from compressmamba.compress import compress_model

    method = recipe.reduction.method or "output"
    with reference_stats() if reference else contextlib.nullcontext():
        return compress_model(copy.deepcopy(model), calib, recipe.reduction.tau, method)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", type=lambda s: s.split(","), default=list(RECIPES))
    p.add_argument("--steps", type=int, default=30)
    a = p.parse_args(argv)
    differ = False
    print("| recipe | method | tau | new N (streamed) | new N (reference) | max diff energy kept | same |")
    print("|---|---|---|---|---|---|---|")
    for name in a.recipes:
        recipe, model, calib = _setup(name, a.steps)
        new, old = (_cut(model, calib, recipe, ref) for ref in (False, True))
        same = new.new_sizes == old.new_sizes
        differ |= not same
        gap = max(abs(x - y) for x, y in zip(new.energy_kept, old.energy_kept))
        method = recipe.reduction.method or "output"
        print(
            f"| {name} | {method} | {recipe.reduction.tau} | {new.new_sizes} | {old.new_sizes} | {gap:.2e} | "
            f"{'yes' if same else 'NO'} |"
        )
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
