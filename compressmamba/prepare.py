"""``compressmamba prepare-data``: build a recipe's token store ahead of a (cluster) job."""

from __future__ import annotations

import time


def _cmd_prepare(args) -> int:
    from .data.text import text_lm
    from .training import load_recipe

    recipe = load_recipe(args.recipe, list(args.overrides))  # every key checked against text_lm's signature
    cfg = dict(recipe.data)
    name = cfg.pop("name", None)
    if name != "text_lm":
        raise ValueError(f"prepare-data builds token stores for text_lm data; {args.recipe} has data.name={name!r}")
    t0 = time.time()
    data = text_lm(**cfg, seed=recipe.seed)  # the same call training makes: same store, same checks
    dt = time.time() - t0
    info = data.info
    m, split = info["manifest"], info["split"]
    c, docs, toks = m["counts"], split["documents"], split["tokens"]
    store_bytes = c["tokens"] * (2 if m["dtype"] == "uint16" else 4) + 8 * c["documents"]
    print(f"{'built' if info['store_built'] else 'reused'} token store {info['store']} in {dt:.2f} s")
    print(f"  documents {c['documents']:,} (train {docs['train']:,}, validation {docs['val']:,})")
    print(f"  tokens {c['tokens']:,} (train {toks['train']:,}, validation {toks['val']:,}), {m['dtype']}")
    print(f"  bytes: source {c['source_bytes']:,}, store {store_bytes:,}")
    print(f"  rows of {info['seq_len']} + 1 tokens: train {len(data.train):,}, validation {len(data.val):,}")
    if c["replaced_invalid_utf8"] or c["empty_documents"]:
        bad, empty = c["replaced_invalid_utf8"], c["empty_documents"]
        print(f"  repaired {bad:,} invalid UTF-8 sequences; {empty:,} empty documents")
    if info["store_built"]:
        secs = m["build_seconds"]
        print(f"  tokenized in {secs:.2f} s ({c['source_bytes'] / 1e6 / max(secs, 1e-9):.1f} MB/s)")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "prepare-data",
        help="tokenize a recipe's corpus once into its token store (text_lm)",
        description="Build (or find) the memory-mapped token store of RECIPE.yaml's data section and print "
        "its path, documents, tokens, bytes and the time taken; `compressmamba train` then starts from it "
        "without reading raw text. Override keys with dotted key=value (e.g. data.num_proc=8).",
    )
    p.add_argument("recipe", help="a YAML file, or a shipped recipe's name (`compressmamba recipes` lists them)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.max_tokens=1000000")
    p.set_defaults(func=_cmd_prepare)
