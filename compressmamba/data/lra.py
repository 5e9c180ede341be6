"""Long Range Arena tasks from their release files: ListOps, IMDB (Text), AAN (Retrieval), Pathfinder, Path-X.

Token tasks follow S4's preprocessing (the one S5, LRU and compressm copy): tokens, then ``<eos>``,
truncated to ``l_max`` including the ``<eos>``; a vocabulary with ``<pad>`` 0, ``<unk>`` 1,
``<eos>`` 2 first and then the training tokens by descending frequency, ties by token ascending
(torchtext's ``build_vocab_from_iterator`` order). Items are padded to ``l_max`` with ``<pad>``
and carry their true ``lengths``:

* ListOps (``basic_{train,val,test}.tsv``, header ``Source\\tTarget``): ``]`` → ``X``, parentheses
  dropped; vocabulary 18; ``l_max`` 2048; 10 classes. ``generate`` makes the files offline.
* IMDB: characters, ``min_freq`` 15, ``l_max`` 4096, 2 classes; from an ``aclImdb`` folder, local
  ``train``/``test`` csv/json/parquet files with ``text``/``label``, or a hub name when online.
  Validation: 10 % of train (seeded) by default, or the test set as the paper did (``val_split: test``).
* AAN (``new_aan_pairs.{train,eval,test}.tsv``: label, id1, id2, text1, text2): characters, 4000 per
  document; items add ``inputs2``/``lengths2`` (dual encoder, ``pair`` = True).

Image tasks: Pathfinder (``pathfinder32/<difficulty>/{imgs,metadata}``) and Path-X (128 × 128),
grayscale pixels as (L, 1) sequences, split 80/10/10 (seeded); preprocessed pixels are cached.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..registry import DataSplits, register_dataset
from .cifar import ImageSequences, split_indices
from .listops_gen import generate_listops, write_listops_release

SPECIALS = ("<pad>", "<unk>", "<eos>")
PAD, UNK, EOS = 0, 1, 2


# ----------------------------------------------------------------------------- vocabulary and encoding


def build_vocab(counts: dict[str, int], min_freq: int = 1, extra: tuple[str, ...] = ()) -> list[str]:
    """Specials, then tokens with count >= ``min_freq`` by descending count, ties by token ascending,
    then any of ``extra`` not yet present (tokens the training data happened not to contain)."""
    toks = sorted((t for t, c in counts.items() if c >= min_freq and t not in SPECIALS), key=lambda t: (-counts[t], t))
    vocab = [*SPECIALS, *toks]
    seen = set(vocab)
    return vocab + [t for t in extra if t not in seen]


Chunks = list[tuple[np.ndarray, np.ndarray]]


def _codepoints(docs: list[str], l_max: int, chunk: int = 4096) -> Chunks:
    """Each document cut to ``l_max - 1`` characters (room for ``<eos>``), as chunks of (flat code
    points, per-document lengths): uint8 when a chunk is Latin-1, else uint32 (keeps memory near
    one byte per character on the large corpora)."""
    out = []
    for s in range(0, max(len(docs), 1), chunk):
        cut = [d[: l_max - 1] for d in docs[s : s + chunk]]
        lengths = np.fromiter((len(d) for d in cut), dtype=np.int64, count=len(cut))
        text = "".join(cut)
        try:
            cps = np.frombuffer(text.encode("latin-1"), dtype=np.uint8)
        except UnicodeEncodeError:
            cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        out.append((cps, lengths))
    return out


def _count(chunks: Chunks, name_of) -> dict[str, int]:
    """Occurrences of each code point, keyed by its token name."""
    total = np.zeros(0, dtype=np.int64)
    for cps, _ in chunks:
        c = np.bincount(cps)
        if len(c) > len(total):
            total = np.pad(total, (0, len(c) - len(total)))
        total[: len(c)] += c
    return {name_of(int(c)): int(total[c]) for c in np.flatnonzero(total)}


def _encode(chunks: Chunks, vocab: list[str], code_of) -> tuple[np.ndarray, np.ndarray]:
    """Code points → ids with ``<eos>`` after each document: flat (T + N,) ids and (N + 1,) offsets.
    Code points outside the vocabulary become ``<unk>``."""
    dtype = np.uint8 if len(vocab) <= 256 else np.int32
    table = {code_of(t): i for i, t in enumerate(vocab) if i >= len(SPECIALS) and code_of(t) is not None}
    top = max([0, *table, *(int(c.max()) for c, _ in chunks if len(c))])
    lut = np.full(top + 1, UNK, dtype=dtype)
    lut[list(table)] = list(table.values())
    lengths = np.concatenate([n for _, n in chunks])
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths + 1, out=offsets[1:])
    flat = np.empty(offsets[-1], dtype=dtype)
    is_eos = np.zeros(offsets[-1], dtype=bool)
    is_eos[offsets[1:] - 1] = True
    flat[~is_eos] = np.concatenate([lut[c] for c, _ in chunks])
    flat[is_eos] = EOS
    return flat, offsets


class TokenSequences(Dataset):
    """Padded token sequences from ragged storage.

    Items: ``inputs`` (l_max,) long padded with ``<pad>`` = 0, ``lengths`` () long, ``labels`` () long;
    with a second document (retrieval) also ``inputs2`` and ``lengths2``.
    """

    def __init__(self, docs, labels, l_max: int, docs2=None, index=None):
        self.flat, self.offsets = docs
        self.docs2 = docs2
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.l_max = l_max
        self.index = np.arange(len(self.labels)) if index is None else np.asarray(index, dtype=np.int64)

    def __len__(self):
        return len(self.index)

    def _doc(self, flat, offsets, j):
        ids = torch.from_numpy(flat[offsets[j] : offsets[j + 1]].astype(np.int64))
        out = torch.full((self.l_max,), PAD, dtype=torch.long)
        out[: len(ids)] = ids
        return out, torch.tensor(len(ids), dtype=torch.long)

    def __getitem__(self, i):
        j = int(self.index[i])
        x, n = self._doc(self.flat, self.offsets, j)
        item = {"inputs": x, "lengths": n, "labels": self.labels[j]}
        if self.docs2 is not None:
            item["inputs2"], item["lengths2"] = self._doc(*self.docs2, j)
        return item


def _check_l_max(l_max) -> int:
    if not isinstance(l_max, int) or l_max < 2:
        raise ValueError(f"l_max must be an int >= 2 (tokens plus <eos>), got {l_max!r}")
    return l_max


def _limit(index: np.ndarray, limit_train) -> np.ndarray:
    return index[: int(limit_train)] if limit_train else index


def _find_file(root: Path, name: str, subdirs: tuple[str, ...], what: str) -> Path:
    for sub in ("", *subdirs):
        p = root / sub / name
        if p.is_file():
            return p
    places = ", ".join(str(root / s / name) for s in ("", *subdirs))
    raise FileNotFoundError(f"{what}: expected the file {name!r} under {root} (looked at {places})")


# ----------------------------------------------------------------------------- ListOps

LISTOPS_TOKENS = ("[MIN", "[MAX", "[MED", "[SM", "X", *"0123456789")
# One character per ListOps token so a whole file encodes with numpy; names for the vocabulary.
_LISTOPS_CODE = {"[MIN": "A", "[MAX": "B", "[MED": "C", "[SM": "D", "X": "X", **{d: d for d in "0123456789"}}
_LISTOPS_NAME = {v: k for k, v in _LISTOPS_CODE.items()}
_WHITESPACE = b" \t\n\r\x0b\x0c"  # what bytes.split() splits on


def listops_tokens(source: str) -> list[str]:
    """S4's reproduction of LRA's tokenizer: ``]`` → ``X``, parentheses dropped, split on whitespace."""
    return source.translate({ord("]"): ord("X"), ord("("): None, ord(")"): None}).split()


def _listops_units(sources: list[str], extra: dict[str, str]) -> list[str]:
    """Each source as one character per token. Fast path (bytes operations in C over the whole
    split) when every token of a line is in the LRA alphabet; otherwise a per-token fallback for that
    line (new tokens get private-use code points, recorded in ``extra``)."""
    big = "\n".join(sources).encode("utf-8")
    for tok, code in (("[MIN", b"A"), ("[MAX", b"B"), ("[MED", b"C"), ("[SM", b"D"), ("]", b"X")):
        big = big.replace(tok.encode(), code)
    lines = big.translate(None, b"()").split(b"\n")
    if len(lines) != len(sources):  # a source with a newline: no fast path
        lines = [b"?"] * len(sources)
    out = []
    for source, b in zip(sources, lines):
        units = b.translate(None, _WHITESPACE)
        # valid iff only alphabet characters remain and each was a whitespace-separated token of its own
        if not units.translate(None, b"ABCDX0123456789") and len(units) == len(b.split()):
            out.append(units.decode("ascii"))
            continue
        toks = []
        for t in listops_tokens(source):
            if t not in _LISTOPS_CODE and t not in extra:
                extra[t] = chr(0xE000 + len(extra))
            toks.append(_LISTOPS_CODE.get(t) or extra[t])
        out.append("".join(toks))
    return out


def read_listops_tsv(path) -> tuple[list[str], np.ndarray]:
    """Sources and integer targets of one ``Source\\tTarget`` TSV."""
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        if header != ["Source", "Target"]:
            raise ValueError(f"{path}: expected the header 'Source\\tTarget', got {header}")
        src, tgt = [], []
        for k, line in enumerate(f, start=2):
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != 2:
                if not line.strip():
                    continue
                raise ValueError(f"{path}:{k}: expected 2 tab-separated columns (Source, Target), got {len(parts)}")
            src.append(parts[0])
            tgt.append(int(float(parts[1])))
    return src, np.asarray(tgt, dtype=np.int64)


_GENERATE_KEYS = {
    "n_train",
    "n_val",
    "n_test",
    "min_length",
    "max_length",
    "max_depth",
    "max_args",
    "seed",
    "max_tries",
}


def _listops_rows(path, generate) -> dict[str, tuple[list[str], np.ndarray]]:
    if generate:
        gen = {} if generate is True else dict(generate)
        unknown = set(gen) - _GENERATE_KEYS
        if unknown:
            raise ValueError(f"data.generate: unknown keys {sorted(unknown)}; valid: {sorted(_GENERATE_KEYS)}")
        sizes = {k: int(gen.pop(f"n_{k}", d)) for k, d in (("train", 96_000), ("val", 2_000), ("test", 2_000))}
        gen.setdefault("seed", 0)
        if path is None:
            rows = generate_listops(sum(sizes.values()), **gen)
            a, b = sizes["train"], sizes["train"] + sizes["val"]
            parts = {"train": rows[:a], "val": rows[a:b], "test": rows[b:]}
            return {k: ([s for s, _ in r], np.array([t for _, t in r], dtype=np.int64)) for k, r in parts.items()}
        root = Path(os.path.expanduser(str(path)))
        stamp = root / "generate.json"
        params = {**{f"n_{k}": v for k, v in sizes.items()}, **gen}
        if not stamp.is_file() and (root / "basic_train.tsv").exists():
            raise ValueError(
                f"data.generate: {root} already holds basic_train.tsv that the generator did not write "
                "(no generate.json); drop data.generate to read it, or give an empty folder"
            )
        if not stamp.is_file() or json.loads(stamp.read_text()) != params:
            write_listops_release(root, **params)
            stamp.write_text(json.dumps(params, sort_keys=True))
    if path is None:
        raise ValueError("listops needs data.path (a folder with basic_{train,val,test}.tsv) or data.generate")
    root = Path(os.path.expanduser(str(path)))
    subs = ("listops", "listops-1000", "lra_release/listops-1000")
    return {k: read_listops_tsv(_find_file(root, f"basic_{k}.tsv", subs, "ListOps")) for k in ("train", "val", "test")}


@register_dataset("listops")
def listops(
    path=None, generate=None, l_max: int = 2048, seed: int = 0, limit_train: int | None = None, **_
) -> DataSplits:
    """LRA ListOps from ``basic_{train,val,test}.tsv`` under ``path`` (or generated: ``generate: {n_train,
    n_val, n_test, min_length, max_length, max_depth, max_args, seed}``; with ``path`` the files are
    written there once). Items: ``inputs`` (l_max,) long, ``lengths``, ``labels`` in 0..9."""
    l_max = _check_l_max(l_max)
    rows = _listops_rows(path, generate)
    extra: dict[str, str] = {}
    units = {k: _listops_units(src, extra) for k, (src, _) in rows.items()}
    names = {**_LISTOPS_NAME, **{v: k for k, v in extra.items()}}
    codes = {k: v for v, k in names.items()}
    cps = {k: _codepoints(u, l_max) for k, u in units.items()}
    vocab = build_vocab(_count(cps["train"], lambda c: names[chr(c)]), extra=LISTOPS_TOKENS)
    code_of = lambda t: ord(codes[t]) if t in codes else None
    data = {k: TokenSequences(_encode(cps[k], vocab, code_of), rows[k][1], l_max) for k in rows}
    data["train"].index = _limit(data["train"].index, limit_train)
    info = {"task": "classification", "vocab_size": len(vocab), "n_classes": 10, "seq_len": l_max, "pair": False}
    return DataSplits(data["train"], data["val"], data["test"], {**info, "vocab": vocab})


# ----------------------------------------------------------------------------- IMDB


def _read_aclimdb(root: Path, split: str) -> tuple[list[str], np.ndarray]:
    texts, labels = [], []
    for label, cls in ((0, "neg"), (1, "pos")):
        folder = root / split / cls
        files = sorted(folder.glob("*.txt")) if folder.is_dir() else []
        if not files:
            raise FileNotFoundError(f"IMDB: expected review files {folder}/<id>_<rating>.txt (aclImdb layout)")
        texts += [f.read_text(encoding="utf-8") for f in files]
        labels += [label] * len(files)
    return texts, np.asarray(labels, dtype=np.int64)


def _read_hf(name, data_files, split) -> tuple[list[str], np.ndarray]:
    import datasets

    ds = datasets.load_dataset(name, data_files=data_files, split=split)
    missing = {"text", "label"} - set(ds.column_names)
    if missing:
        raise ValueError(f"IMDB {name!r} split {split!r}: columns {ds.column_names}, expected 'text' and 'label'")
    return list(ds["text"]), np.asarray(ds["label"], dtype=np.int64)


def _imdb_texts(path, dataset) -> dict[str, tuple[list[str], np.ndarray]]:
    if path is None:
        if not dataset:
            raise ValueError("imdb needs data.path (aclImdb folder or train/test files) or data.dataset (a hub name)")
        return {s: _read_hf(dataset, None, s) for s in ("train", "test")}
    root = Path(os.path.expanduser(str(path)))
    for cand in (root, root / "aclImdb"):
        if (cand / "train" / "pos").is_dir() or (cand / "train" / "neg").is_dir():
            return {s: _read_aclimdb(cand, s) for s in ("train", "test")}
    kinds = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
    for ext, kind in kinds.items():
        if (root / f"train{ext}").is_file():
            test = root / f"test{ext}"
            if not test.is_file():
                raise FileNotFoundError(f"IMDB: found {root / f'train{ext}'} but expected {test} beside it")
            files = {"train": str(root / f"train{ext}"), "test": str(test)}
            return {s: _read_hf(kind, files, s) for s in ("train", "test")}
    raise FileNotFoundError(
        f"IMDB: expected {root}/aclImdb/train/{{pos,neg}}/*.txt (or {root}/train/{{pos,neg}}/*.txt), "
        f"or {root}/train.{{csv,json,jsonl,parquet}} and test.* with text,label columns"
    )


@register_dataset("imdb")
def imdb(
    path=None,
    dataset=None,
    l_max: int = 4096,
    min_freq: int = 15,
    val_split: str = "train",
    val_fraction: float = 0.1,
    seed: int = 0,
    limit_train: int | None = None,
    **_,
) -> DataSplits:
    """Character-level IMDB. ``val_split``: ``"train"`` (10 % of train, seeded; the default) or ``"test"``
    (the paper's and LRA's practice: the test set doubles as validation). The vocabulary comes from
    the whole train split (S4: ``min_freq`` 15 → 135 symbols). Items as ListOps, labels 0 neg / 1 pos."""
    l_max = _check_l_max(l_max)
    if val_split not in ("train", "test"):
        raise ValueError(f"val_split must be 'train' (held out from train) or 'test' (the paper's), got {val_split!r}")
    raw = _imdb_texts(path, dataset)
    cps = {k: _codepoints(t, l_max) for k, (t, _) in raw.items()}
    vocab = build_vocab(_count(cps["train"], chr), min_freq=min_freq)
    enc = {k: _encode(cps[k], vocab, ord) for k in raw}
    test = TokenSequences(enc["test"], raw["test"][1], l_max)
    if val_split == "test":
        train, val = TokenSequences(enc["train"], raw["train"][1], l_max), test
    else:
        tr, va = split_indices(len(raw["train"][1]), val_fraction, seed)
        train = TokenSequences(enc["train"], raw["train"][1], l_max, index=tr)
        val = TokenSequences(enc["train"], raw["train"][1], l_max, index=va)
    train.index = _limit(train.index, limit_train)
    info = {"task": "classification", "vocab_size": len(vocab), "n_classes": 2, "seq_len": l_max, "pair": False}
    return DataSplits(train, val, test, {**info, "vocab": vocab})


# ----------------------------------------------------------------------------- AAN retrieval

AAN_FILES = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv", "test": "new_aan_pairs.test.tsv"}


def read_aan_tsv(path, max_chars: int | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """Columns label, id1, id2, text1, text2 (no header, no quoting); label 0/1 (written as a float).
    Texts are cut to ``max_chars`` while reading (the documents are whole papers)."""
    t1, t2, labels = [], [], []
    with open(path, encoding="utf-8", newline="\n") as f:
        for k, line in enumerate(f, start=1):
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != 5:
                if not line.strip():
                    continue
                raise ValueError(f"{path}:{k}: expected 5 tab-separated columns (label, id1, id2, text1, text2)")
            labels.append(int(float(parts[0])))
            t1.append(parts[3][:max_chars])
            t2.append(parts[4][:max_chars])
    return t1, t2, np.asarray(labels, dtype=np.int64)


@register_dataset("aan")
def aan(path=None, l_max: int = 4000, min_freq: int = 1, seed: int = 0, limit_train: int | None = None, **_):
    """AAN retrieval pairs from ``new_aan_pairs.{train,eval,test}.tsv`` under ``path`` (eval → val).

    Items: ``inputs``, ``inputs2`` (l_max,) long, ``lengths``, ``lengths2``, ``labels`` () 0/1.
    The character vocabulary comes from both documents of the training pairs.
    """
    l_max = _check_l_max(l_max)
    if path is None:
        raise ValueError("aan needs data.path: a folder with new_aan_pairs.{train,eval,test}.tsv")
    root = Path(os.path.expanduser(str(path)))
    subs = ("tsv_data", "aan", "lra_release/tsv_data")
    raw = {k: read_aan_tsv(_find_file(root, name, subs, "AAN"), l_max - 1) for k, name in AAN_FILES.items()}
    cps = {k: (_codepoints(r[0], l_max), _codepoints(r[1], l_max)) for k, r in raw.items()}
    vocab = build_vocab(_count(cps["train"][0] + cps["train"][1], chr), min_freq=min_freq)
    data = {
        k: TokenSequences(_encode(c1, vocab, ord), raw[k][2], l_max, docs2=_encode(c2, vocab, ord))
        for k, (c1, c2) in cps.items()
    }
    data["train"].index = _limit(data["train"].index, limit_train)
    info = {"task": "classification", "vocab_size": len(vocab), "n_classes": 2, "seq_len": l_max, "pair": True}
    return DataSplits(data["train"], data["val"], data["test"], {**info, "vocab": vocab})


# ----------------------------------------------------------------------------- Pathfinder and Path-X

DIFFICULTIES = ("curv_baseline", "curv_contour_length_9", "curv_contour_length_14")
# Known empty image in the release (S4 and compressm skip it); any other empty file is skipped too.
BLACKLIST = {"pathfinder32/curv_baseline/imgs/0/sample_172.png"}


def find_pathfinder_root(path, resolution: int, difficulty: str) -> Path:
    """The ``<difficulty>`` folder (holding ``imgs/`` and ``metadata/``) under ``path``."""
    root = Path(os.path.expanduser(str(path)))
    pf = f"pathfinder{resolution}"
    cands = [root / s / difficulty for s in ("", pf, f"lra_release/{pf}", f"lra_release/lra_release/{pf}")]
    for c in cands:
        if (c / "metadata").is_dir():
            return c
    raise FileNotFoundError(
        f"Pathfinder-{resolution}: expected the folder {difficulty}/metadata/*.npy (with {difficulty}/imgs/) "
        f"under {root} (looked at {', '.join(str(c / 'metadata') for c in cands)})"
    )


def read_pathfinder_metadata(droot: Path) -> list[tuple[str, int]]:
    """(relative image path, label) per line of ``metadata/<k>.npy`` (plain text despite the suffix)."""
    files = sorted((droot / "metadata").glob("*.npy"), key=lambda p: (len(p.stem), p.stem))
    if not files:
        raise FileNotFoundError(f"Pathfinder: expected metadata files {droot / 'metadata'}/<k>.npy")
    rows = []
    for f in files:
        for k, line in enumerate(f.read_text().splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 4:
                raise ValueError(f"{f}:{k}: expected 'imgs/<k> sample_<i>.png <x> <label> …', got {line!r}")
            rows.append((f"{parts[0]}/{parts[1]}", int(parts[3])))
    return rows


def _read_pngs(droot: Path, rows, resolution: int, blacklisted: set[str]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    images, labels = [], []
    for rel, label in rows:
        f = droot / rel
        if rel in blacklisted:
            continue
        if not f.is_file():
            raise FileNotFoundError(f"Pathfinder: image {f} is listed in {droot / 'metadata'} but missing")
        if f.stat().st_size == 0:
            continue
        with Image.open(f) as im:
            a = np.asarray(im.convert("L"), dtype=np.uint8)
        if a.shape != (resolution, resolution):
            raise ValueError(f"{f}: image is {a.shape}, expected ({resolution}, {resolution})")
        images.append(a.reshape(-1))
        labels.append(label)
    if not images:
        raise ValueError(f"Pathfinder: no readable images under {droot}")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _cache_dir(cache_dir) -> Path:
    if cache_dir is not None:
        return Path(os.path.expanduser(str(cache_dir)))
    base = os.environ.get("COMPRESSMAMBA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "compressmamba"
    )
    return Path(base)


def load_pathfinder(path, resolution: int, difficulty: str, cache=True, cache_dir=None):
    """(N, resolution²) uint8 pixels (memory-mapped from the cache when ``cache``) and (N,) labels."""
    droot = find_pathfinder_root(path, resolution, difficulty)
    meta = sorted((droot / "metadata").glob("*.npy"))
    stamp = [str(droot.resolve()), resolution] + [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in meta]
    key = hashlib.sha1(json.dumps(stamp).encode()).hexdigest()[:16]
    cdir = _cache_dir(cache_dir) / f"pathfinder{resolution}_{difficulty}_{key}"
    if cache and (cdir / "labels.npy").is_file():
        return np.load(cdir / "pixels.npy", mmap_mode="r"), np.load(cdir / "labels.npy")
    blacklisted = {b.split("/", 2)[2] for b in BLACKLIST if b.startswith(f"pathfinder{resolution}/{difficulty}/")}
    x, y = _read_pngs(droot, read_pathfinder_metadata(droot), resolution, blacklisted)
    if cache:
        cdir.mkdir(parents=True, exist_ok=True)
        np.save(cdir / "pixels.npy", x)
        np.save(cdir / "labels.npy", y)  # written last: its presence marks a complete cache
    return x, y


def _pathfinder_splits(path, resolution, difficulty, normalization, split_seed, cache, cache_dir, limit_train):
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    norms = {"s4": (0.5, 0.5), "unit": (0.0, 1.0)}
    if normalization not in norms:
        raise ValueError(f"normalization must be 's4' ([-1, 1]) or 'unit' ([0, 1]), got {normalization!r}")
    if path is None:
        raise ValueError(f"pathfinder needs data.path: a folder holding pathfinder{resolution}/{difficulty}/")
    x, y = load_pathfinder(path, resolution, difficulty, cache, cache_dir)
    n = len(y)
    n_val = n_test = int(0.1 * n)
    if n - n_val - n_test < 1 or n_val < 1:
        raise ValueError(f"Pathfinder: {n} images are too few for an 80/10/10 split")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(split_seed))).numpy()
    tr, va, te = order[: n - n_val - n_test], order[n - n_val - n_test : n - n_test], order[n - n_test :]
    pixels = x.reshape(n, resolution * resolution, 1)
    mean, std = norms[normalization]
    make = lambda idx: ImageSequences(pixels, y, (mean,), (std,), index=idx)
    info = {"task": "classification", "d_input": 1, "n_classes": 2, "seq_len": resolution**2, "pair": False}
    return DataSplits(make(_limit(tr, limit_train)), make(va), make(te), info)


@register_dataset("pathfinder")
def pathfinder(
    path=None,
    resolution: int = 32,
    difficulty: str = "curv_contour_length_14",
    normalization: str = "s4",
    split_seed: int = 42,
    cache: bool = True,
    cache_dir=None,
    limit_train: int | None = None,
    **_,
) -> DataSplits:
    """Pathfinder: (resolution², 1) float32 pixel sequences, labels 0/1, split 80/10/10.

    The split uses ``split_seed`` (S4's 42), not the run's seed: the test set is carved from the same
    images, so every seed of an experiment must see the same one.

    ``difficulty`` defaults to the hard ``curv_contour_length_14`` (S4/S5/LRU); ``curv_baseline`` is
    what the paper's JAX code used. ``normalization``: ``"s4"`` → [-1, 1], ``"unit"`` → [0, 1].
    Decoded pixels are cached under ``cache_dir`` (default ``~/.cache/compressmamba``).
    """
    return _pathfinder_splits(path, resolution, difficulty, normalization, split_seed, cache, cache_dir, limit_train)


@register_dataset("pathx")
def pathx(
    path=None,
    difficulty: str = "curv_contour_length_14",
    normalization: str = "s4",
    split_seed: int = 42,
    cache: bool = True,
    cache_dir=None,
    limit_train: int | None = None,
    **_,
) -> DataSplits:
    """Path-X: Pathfinder at 128 × 128 (16,384 steps) from ``pathfinder128/<difficulty>/``."""
    return _pathfinder_splits(path, 128, difficulty, normalization, split_seed, cache, cache_dir, limit_train)
