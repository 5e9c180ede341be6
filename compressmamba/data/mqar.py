"""Multi-query associative recall (MQAR; Zoology, Arora et al. 2023), generated from a seed.

A sequence of ``seq_len`` tokens shows ``n_pairs`` key-value pairs ``k1 v1 k2 v2 ...`` and then,
in the rest of the sequence, ``n_queries`` of those keys again, each followed by its value; the
model must predict each queried key's value (the answer) from what it stored while reading the
pairs. Tokens: 0 is the blank that fills the gaps, keys are ``1 .. vocab_size // 2 - 1``, values
``vocab_size // 2 .. vocab_size - 1``; within a sequence the keys are distinct, the values are
distinct and each pair is queried at most once. The query section is cut into two-token slots
after the pairs; the queries take ``n_queries`` slots drawn uniformly, in random pair order.

Items are ``{"input_ids", "labels"}`` (seq_len,) long, as a causal LM takes them: ``labels`` is
-100 everywhere but at the answers, where it holds the value, so the LM's shifted loss
(``logits[:, t]`` against ``labels[:, t + 1]``) counts the answers only: the prediction made at
the queried key. ``info["answer_accuracy"]`` tells the trainer to report the accuracy of those
predictions (argmax over the vocabulary).

Written from the paper's description, not from Zoology's code. The train, validation and test
sets are fixed sets drawn once from (seed, split) with numpy's PCG64; a training run revisits its
train set every ``n_train / batch_size`` steps.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..registry import DataSplits, register_dataset

IGNORE = -100  # the label of every position that is not an answer (the LM's ignore_index)
BLANK = 0  # the token between queries
_SPLITS = {"train": 0, "val": 1, "test": 2}


class RecallSet(Dataset):
    """Fixed MQAR examples: ``tokens`` (n, L) int and ``answer`` (n, L) bool (True at the value
    of each query). Items: ``input_ids`` (L,) long and ``labels`` (L,) long, -100 off the answers."""

    def __init__(self, tokens: torch.Tensor, answer: torch.Tensor):
        if tokens.shape != answer.shape:
            raise ValueError(f"tokens {tuple(tokens.shape)} and answer mask {tuple(answer.shape)} differ")
        self.tokens, self.answer = tokens, answer

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, i):
        x = self.tokens[i].long()
        return {"input_ids": x, "labels": torch.where(self.answer[i], x, torch.full_like(x, IGNORE))}


def _distinct(rng: np.random.Generator, n: int, pool: int, k: int) -> np.ndarray:
    """(n, k) ints in [0, pool), distinct within each row, uniformly drawn (k of a random permutation)."""
    return np.argsort(rng.random((n, pool)), axis=1)[:, :k]


def generate(
    n: int, vocab_size: int, n_pairs: int, seq_len: int, n_queries: int, seed: int, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` MQAR sequences drawn from (seed, split). Returns ``tokens`` (n, seq_len) int64 and
    ``answer`` (n, seq_len) bool (True where a query's value stands)."""
    rng = np.random.default_rng([seed, _SPLITS[split]])
    half = vocab_size // 2
    n_slots = (seq_len - 2 * n_pairs) // 2
    keys = _distinct(rng, n, half - 1, n_pairs) + 1
    values = _distinct(rng, n, vocab_size - half, n_pairs) + half
    asked = _distinct(rng, n, n_pairs, n_queries)  # which pairs are queried, in query order
    slots = np.sort(_distinct(rng, n, n_slots, n_queries), axis=1)  # where, in sequence order
    tokens = np.full((n, seq_len), BLANK, dtype=np.int64)
    tokens[:, 0 : 2 * n_pairs : 2], tokens[:, 1 : 2 * n_pairs : 2] = keys, values
    rows = np.arange(n)[:, None]
    at = 2 * n_pairs + 2 * slots
    tokens[rows, at] = np.take_along_axis(keys, asked, 1)
    tokens[rows, at + 1] = np.take_along_axis(values, asked, 1)
    answer = np.zeros((n, seq_len), dtype=bool)
    answer[rows, at + 1] = True
    return tokens, answer


def _check(key: str, value, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"data.{key} = {value!r}: expected {expected}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_args(vocab_size, n_pairs, seq_len, n_queries, n_train, n_val, n_test) -> None:
    """One-line errors naming the key, its value and what was expected."""
    for key, v in (("vocab_size", vocab_size), ("n_pairs", n_pairs), ("seq_len", seq_len)):
        _check(key, v, _is_int(v) and v >= 1, "a positive int")
    for key, v in (("n_train", n_train), ("n_val", n_val)):
        _check(key, v, _is_int(v) and v >= 1, "a positive int")
    _check("n_test", n_test, n_test is None or (_is_int(n_test) and n_test >= 0), "a non-negative int or null")
    _check("vocab_size", vocab_size, vocab_size >= 4, "at least 4 (a blank, keys and values)")
    keys = vocab_size // 2 - 1
    _check("n_pairs", n_pairs, n_pairs <= keys, f"at most {keys} (the distinct keys of vocab_size {vocab_size})")
    q_ok = n_queries is None or (_is_int(n_queries) and 1 <= n_queries <= n_pairs)
    _check("n_queries", n_queries, q_ok, f"null or an int in [1, n_pairs = {n_pairs}]")
    need = 2 * (n_pairs + (n_pairs if n_queries is None else n_queries))
    _check("seq_len", seq_len, seq_len >= need, f"at least 2 * (n_pairs + n_queries) = {need}")


def _recall_set(n: int, split: str, **kw) -> RecallSet:
    tokens, answer = generate(n, split=split, **kw)
    dtype = torch.int16 if kw["vocab_size"] <= 32767 else torch.int32  # the train set stays small in memory
    return RecallSet(torch.from_numpy(tokens).to(dtype), torch.from_numpy(answer))


@register_dataset("mqar")
def mqar(
    *,
    vocab_size: int = 128,
    n_pairs: int = 16,
    seq_len: int = 128,
    n_queries: int | None = None,
    n_train: int = 20_000,
    n_val: int = 1_000,
    n_test: int | None = None,
    seed: int = 0,
) -> DataSplits:
    """MQAR train / validation / test sets drawn from ``seed`` (see the module docstring).

    ``n_queries`` defaults to ``n_pairs`` (every pair queried once); ``n_test`` to ``n_val``
    (0: no test split). ``info``: ``task`` "lm", ``vocab_size``, ``seq_len``, ``answer_accuracy``
    True (the trainer reports the accuracy of the answers), ``chance`` (1 / n_pairs: a guess
    among the values shown).
    """
    check_args(vocab_size, n_pairs, seq_len, n_queries, n_train, n_val, n_test)
    kw = dict(vocab_size=vocab_size, n_pairs=n_pairs, seq_len=seq_len, seed=seed)
    kw["n_queries"] = n_pairs if n_queries is None else n_queries
    n_test = n_val if n_test is None else n_test
    test = _recall_set(n_test, "test", **kw) if n_test else None
    info = {"task": "lm", "vocab_size": vocab_size, "seq_len": seq_len, "answer_accuracy": True}
    info["chance"] = 1 / n_pairs
    return DataSplits(_recall_set(n_train, "train", **kw), _recall_set(n_val, "val", **kw), test, info)
