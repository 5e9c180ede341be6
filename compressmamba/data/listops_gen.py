"""A ListOps generator written to the Long Range Arena specification (``lra_benchmarks/data/listops.py``).

Trees: from the root (depth 1), a node below ``max_depth`` is a value leaf with probability
1 − ``VALUE_P`` (0.75) and otherwise an operator (MIN, MAX, MED, SM) over randint(2, ``max_args``)
subtrees one level deeper; at ``max_depth`` it is always a leaf. A tree's length counts operator,
value and closing ``]`` tokens (leaf 1; operator 2 + its children). Unique trees with
``min_length < length < max_length`` (LRA: 500 and 2000) are collected until enough, then split
train / val / test in collection order. Printing is LRA's left-nested pair chain, e.g.
``( ( ( [MAX 2 ) 9 ) ] )``. Semantics: MIN, MAX, MED = floor median (``int(np.median)``), SM = sum mod 10.

Written from the specification, not copied; Python's ``random.Random(seed)`` makes it deterministic.
"""

from __future__ import annotations

import random
from pathlib import Path

from ..atomic import atomic_write_text

VALUE_P = 0.25  # LRA's constant: a draw r > VALUE_P makes a value leaf
OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
VALUES = tuple(range(10))


def _median_floor(args: list[int]) -> int:
    s = sorted(args)
    k = len(s)
    return s[k // 2] if k % 2 else (s[k // 2 - 1] + s[k // 2]) // 2


def apply_op(op: str, args: list[int]) -> int:
    """Value of operator ``op`` on its argument values."""
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[MED":
        return _median_floor(args)
    if op == "[SM":
        return sum(args) % 10
    raise ValueError(f"op must be one of {OPERATORS}, got {op!r}")


def generate_tree(rng: random.Random, depth: int = 1, max_depth: int = 10, max_args: int = 10):
    """One random tree: an int (leaf) or ``(op, [children])``. Returns (tree, length, value)."""
    r = rng.random() if depth < max_depth else 1.0
    if r > VALUE_P:
        v = rng.choice(VALUES)
        return v, 1, v
    children, length, values = [], 2, []
    for _ in range(rng.randint(2, max_args)):
        t, n, v = generate_tree(rng, depth + 1, max_depth, max_args)
        children.append(t)
        length += n
        values.append(v)
    op = rng.choice(OPERATORS)
    return (op, children), length, apply_op(op, values)


def tree_to_string(tree) -> str:
    """LRA's printing: the chain ((op a1) a2) … ]) with every pair written as ``( x y )``."""
    if not isinstance(tree, tuple):
        return str(tree)
    op, children = tree
    s = op
    for c in [*children, END]:
        s = f"( {s} {tree_to_string(c)} )"
    return s


def generate_listops(
    n: int,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    seed: int = 0,
    max_tries: int | None = None,
) -> list[tuple[str, int]]:
    """``n`` unique (source, target) pairs with ``min_length < length < max_length`` (strict, as LRA).

    Raises ValueError if ``max_tries`` draws (default 2000 · n) do not yield enough trees.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= min_length < max_length - 1:
        raise ValueError(f"need 0 <= min_length < max_length - 1, got min_length {min_length}, max_length {max_length}")
    if max_depth < 2 or max_args < 2:
        raise ValueError(f"max_depth and max_args must be >= 2, got {max_depth}, {max_args}")
    rng = random.Random(seed)
    rows: dict[str, int] = {}  # insertion-ordered set of unique sources
    tries, limit = 0, max_tries or 2000 * n
    while len(rows) < n:
        tries += 1
        if tries > limit:
            raise ValueError(
                f"only {len(rows)} of {n} unique trees with {min_length} < length < {max_length} after {limit} "
                f"draws (max_depth {max_depth}, max_args {max_args}): widen the length limits"
            )
        tree, length, value = generate_tree(rng, 1, max_depth, max_args)
        if min_length < length < max_length:
            rows.setdefault(tree_to_string(tree), value)
    return list(rows.items())


def write_tsv(path, rows: list[tuple[str, int]]) -> None:
    """Write rows in the LRA release format: header ``Source\\tTarget``, one tree per line."""
    atomic_write_text(path, "Source\tTarget\n" + "".join(f"{src}\t{tgt}\n" for src, tgt in rows))


def write_listops_release(
    out_dir, n_train: int = 96_000, n_val: int = 2_000, n_test: int = 2_000, seed: int = 0, **tree_kw
) -> dict[str, Path]:
    """Generate and write ``basic_{train,val,test}.tsv`` into ``out_dir`` (LRA's 96k / 2k / 2k by default)."""
    for name, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    rows = generate_listops(n_train + n_val + n_test, seed=seed, **tree_kw)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = {"train": rows[:n_train], "val": rows[n_train : n_train + n_val], "test": rows[n_train + n_val :]}
    paths = {}
    for split, part in parts.items():
        paths[split] = out / f"basic_{split}.tsv"
        write_tsv(paths[split], part)
    return paths
