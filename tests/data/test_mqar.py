"""MQAR (data/mqar.py): seeded, correct by construction, scored on the answers only."""

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from compressmamba.data.mqar import IGNORE, generate, mqar
from compressmamba.training import Trainer, load_recipe
from compressmamba.training.answers import answer_counts

ROOT = Path(__file__).resolve().parents[2]
KW = dict(vocab_size=40, n_pairs=6, seq_len=37, n_queries=4)  # odd length: one spare position


def test_same_seed_same_examples_other_seed_or_split_others():
    a, am = generate(50, seed=3, **KW)
    b, bm = generate(50, seed=3, **KW)
    assert (a == b).all() and (am == bm).all()
    assert (a != generate(50, seed=4, **KW)[0]).any()
    assert (a != generate(50, seed=3, split="val", **KW)[0]).any()
    d1, d2 = mqar(**KW, n_train=30, n_val=10, seed=5), mqar(**KW, n_train=30, n_val=10, seed=5)
    for split in ("train", "val", "test"):
        x, y = getattr(d1, split), getattr(d2, split)
        assert all(torch.equal(x[i]["input_ids"], y[i]["input_ids"]) for i in range(len(x)))


def test_answers_match_a_brute_force_lookup():
    tokens, answer = generate(300, seed=0, **KW)
    n_pairs, half = KW["n_pairs"], KW["vocab_size"] // 2
    for seq, ans in zip(tokens.tolist(), answer.tolist()):
        pairs = seq[: 2 * n_pairs]
        keys, values = pairs[0::2], pairs[1::2]
        assert len(set(keys)) == n_pairs and len(set(values)) == n_pairs
        assert all(1 <= k < half for k in keys) and all(half <= v < KW["vocab_size"] for v in values)
        at = [t for t in range(len(seq)) if ans[t]]
        assert len(at) == KW["n_queries"] and min(at) > 2 * n_pairs
        asked = []
        for t in at:  # the token before an answer is a key shown earlier; the answer is its value
            key = seq[t - 1]
            shown = [i for i in range(0, 2 * n_pairs, 2) if seq[i] == key]
            assert len(shown) == 1 and seq[t] == seq[shown[0] + 1]
            asked.append(key)
        assert len(set(asked)) == len(asked)
        rest = [seq[t] for t in range(2 * n_pairs, len(seq)) if not ans[t] and not (t + 1 < len(seq) and ans[t + 1])]
        assert set(rest) <= {0}  # between the queries: blanks only


def test_labels_are_the_answers_only():
    d = mqar(**KW, n_train=20, n_val=5, n_test=0, seed=1)
    assert d.test is None and d.info["task"] == "lm" and d.info["answer_accuracy"]
    item = d.train[7]
    keep = item["labels"] != IGNORE
    assert int(keep.sum()) == KW["n_queries"]
    assert torch.equal(item["labels"][keep], item["input_ids"][keep])


def test_answer_counts_match_a_direct_count():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 9, 11, generator=g)
    labels = torch.full((3, 9), IGNORE)
    labels[0, 4], labels[1, 1], labels[1, 8], labels[2, 5] = 3, 7, 0, 2
    labels[0, 5] = int(logits[0, 4].argmax())  # one sure hit
    correct, count = answer_counts(logits, labels)
    at = [(b, t) for b in range(3) for t in range(1, 9) if labels[b, t] != IGNORE]
    direct = [int(logits[b, t - 1].argmax()) == int(labels[b, t]) for b, t in at]
    assert int(count) == len(direct) == 5 and int(correct) == sum(direct) >= 1


def _recipe(family: str, tmp_path, *extra):
    over = [
        f"out_dir={tmp_path / family}",
        "model.d_model=16",
        "model.state_size=8",
        "data.n_train=64",
        "data.n_val=24",
        "train.steps=3",
        "train.batch_size=8",
        "train.eval_every=3",
        "train.eval_batch_size=10",  # 24 = 10 + 10 + 4: a short last batch
        "train.eval_batches=null",
        "train.progress=false",
        *extra,
    ]
    if family == "mamba2":
        over += ["model.head_dim=8", "model.chunk_size=16"]
    return load_recipe(ROOT / f"recipes/mqar/{family}.yaml", over)


@pytest.mark.parametrize("family", ["mamba", "mamba2"])
def test_recipe_trains_and_scores_the_answers_only(family, tmp_path):
    trainer = Trainer(_recipe(family, tmp_path))
    summary = trainer.fit()
    assert summary["steps"] == 3 and 0 <= summary["best_val_accuracy"] <= 1
    assert summary["test_accuracy"] is not None
    res = trainer.evaluate("val", whole=True)
    model, ds = trainer.model.eval(), trainer.data.val
    hits, losses = [], []
    with torch.no_grad():
        for i in range(len(ds)):
            x, y = ds[i]["input_ids"], ds[i]["labels"]
            logits = model(input_ids=x[None]).logits[0]
            for t in range(1, len(y)):
                if y[t] != IGNORE:
                    hits.append(int(logits[t - 1].argmax()) == int(y[t]))
                    losses.append(float(F.cross_entropy(logits[t - 1], y[t])))
    assert len(hits) == len(ds) * trainer.recipe.data["n_pairs"]  # every pair queried once
    assert res["accuracy"] == pytest.approx(sum(hits) / len(hits), abs=1e-12)
    assert res["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("n_pairs", 40, "at most 19"),
        ("seq_len", 10, "at least 2 * (n_pairs + n_queries)"),
        ("n_queries", 0, "null or an int in"),
        ("vocab_size", 2.5, "a positive int"),
        ("n_test", -1, "non-negative int or null"),
    ],
)
def test_bad_values_name_key_value_and_expectation(key, value, expected):
    kw = {**KW, "n_train": 4, "n_val": 4, key: value}
    with pytest.raises(ValueError, match=rf"^data\.{key} = {re.escape(repr(value))}: expected .*{re.escape(expected)}"):
        mqar(**kw)
