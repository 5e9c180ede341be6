"""Language-model data: packed token sequences from a built-in corpus, local files or a hub name.

Corpora: ``corpus: python_stdlib`` (the running interpreter's own standard-library sources: real
text that always exists), ``files: [paths or globs]`` (.txt, or .json/.jsonl/.parquet/.csv with a
``text`` column, read through HF ``datasets``), or ``dataset: hub/name`` (online). Tokenizers:
``byte`` (vocab 256, no download), a local ``tokenizer.json``, or a hub name. Documents are split
into train/validation by document (seeded), concatenated with an end-of-text separator, and cut
into packed rows of ``seq_len + 1`` tokens: items ``{"input_ids", "labels"}`` (labels ==
input_ids; the model shifts).
"""

from __future__ import annotations

import glob
import os
import sysconfig
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..registry import DataSplits, register_dataset

_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "turtledemo", "__pycache__", "lib2to3"}


def python_stdlib_files() -> list[Path]:
    """The standard library's .py files of the running interpreter, sorted (deterministic)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        files += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py")]
    if not files:
        raise FileNotFoundError(f"no .py files under the standard library at {root}")
    return files


def _read_documents(corpus, files, dataset, split, text_column, max_bytes) -> list[bytes]:
    docs, total = [], 0
    if corpus == "python_stdlib":
        for f in python_stdlib_files():
            b = f.read_bytes()
            docs.append(b)
            total += len(b)
            if max_bytes and total >= max_bytes:
                break
        return docs
    if corpus is not None:
        raise ValueError(f"data.corpus must be 'python_stdlib' or null, got {corpus!r}")
    if files:
        paths = []
        for pattern in [files] if isinstance(files, str) else files:
            hits = sorted(glob.glob(os.path.expanduser(str(pattern)), recursive=True))
            if not hits:
                raise FileNotFoundError(f"data.files: nothing matches {pattern!r}")
            paths += hits
        txt = [p for p in paths if p.endswith(".txt")]
        docs = [Path(p).read_bytes() for p in txt]
        other = [p for p in paths if not p.endswith(".txt")]
        if other:
            ext = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
            kinds = {ext.get(Path(p).suffix) for p in other}
            if None in kinds or len(kinds) > 1:
                raise ValueError(
                    f"data.files mixes or holds unsupported types: {other[:5]} (use .txt, .json(l), .parquet, .csv)"
                )
            docs += _hf_documents(kinds.pop(), {"train": other}, "train", text_column)
    elif dataset:
        docs = _hf_documents(dataset, None, split, text_column)
    else:
        raise ValueError("text data needs one of data.corpus (python_stdlib), data.files or data.dataset")
    if max_bytes:
        out, total = [], 0
        for d in docs:
            out.append(d)
            total += len(d)
            if total >= max_bytes:
                break
        docs = out
    return docs


def _hf_documents(name, data_files, split, text_column) -> list[bytes]:
    import datasets

    ds = datasets.load_dataset(name, data_files=data_files, split=split)
    if text_column not in ds.column_names:
        raise ValueError(
            f"dataset {name!r} has columns {ds.column_names}, expected a {text_column!r} column (data.text_column)"
        )
    return [t.encode("utf-8") for t in ds[text_column]]


_EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")


class Tokenizer:
    """``byte`` (ids 0–255; the document separator is 0x00, absent from text files), a local
    ``tokenizer.json`` (or a folder holding one) read with ``tokenizers``, or a hub name loaded
    with transformers' ``AutoTokenizer`` (online only)."""

    def __init__(self, spec: str = "byte"):
        if not isinstance(spec, str) or not spec:
            raise ValueError(f"data.tokenizer must be 'byte', a tokenizer.json path or a hub name, got {spec!r}")
        self.spec, self._tok, self._hf = spec, None, False
        if spec == "byte":
            self.vocab_size, self.eos = 256, 0
            return
        path = Path(os.path.expanduser(spec))
        if path.is_dir():
            path = path / "tokenizer.json"
        if path.suffix == ".json":
            if not path.is_file():
                raise FileNotFoundError(f"data.tokenizer: expected a tokenizer file at {path}")
            from tokenizers import Tokenizer as HFTok

            self._tok = HFTok.from_file(str(path))
            self.vocab_size = self._tok.get_vocab_size()
            ids = [self._tok.token_to_id(t) for t in _EOS_NAMES]
            self.eos = next((i for i in ids if i is not None), 0)
        else:
            from transformers import AutoTokenizer

            self._tok, self._hf = AutoTokenizer.from_pretrained(spec), True
            self.vocab_size = len(self._tok)
            self.eos = self._tok.eos_token_id or 0

    def encode_many(self, docs: list[bytes]) -> list[np.ndarray]:
        """Token ids (int64) of each document."""
        if self._tok is None:
            return [np.frombuffer(d, dtype=np.uint8).astype(np.int64) for d in docs]
        texts = [d.decode("utf-8", errors="replace") for d in docs]
        if self._hf:
            ids = self._tok(texts, add_special_tokens=False, verbose=False)["input_ids"]
        else:
            ids = [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]
        return [np.asarray(i, dtype=np.int64) for i in ids]

    def encode(self, doc: bytes) -> np.ndarray:
        return self.encode_many([doc])[0]

    def decode(self, ids) -> str:
        if self._tok is None:
            return bytes(int(i) for i in ids).decode("utf-8", errors="replace")
        return self._tok.decode(list(ids))


class PackedLM(Dataset):
    """Rows of ``seq_len + 1`` consecutive tokens from one long stream (consecutive rows share one
    token, so every token but the first is a target exactly once).

    Items: ``input_ids`` (seq_len + 1,) long and ``labels`` (the same tensor; the model shifts).
    ``data`` is the stream in the smallest integer dtype that holds the vocabulary.
    """

    def __init__(self, stream: np.ndarray, seq_len: int, vocab_size: int = 1 << 31):
        n = (len(stream) - 1) // seq_len
        if n < 1:
            raise ValueError(f"text has {len(stream)} tokens, fewer than one sequence of seq_len {seq_len} + 1")
        dtype = np.uint8 if vocab_size <= 256 else (np.int16 if vocab_size <= 32767 else np.int32)
        self.data = torch.from_numpy(np.ascontiguousarray(stream[: n * seq_len + 1], dtype=dtype))
        self.seq_len, self.n = seq_len, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not -self.n <= i < self.n:
            raise IndexError(f"row {i} out of range for {self.n} rows")
        i %= self.n
        x = self.data[i * self.seq_len : (i + 1) * self.seq_len + 1].long()
        return {"input_ids": x, "labels": x}


def _stream(docs: list[bytes], tok: Tokenizer) -> np.ndarray:
    sep = np.array([tok.eos], dtype=np.int64)
    parts = [p for ids in tok.encode_many(docs) for p in (ids, sep)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


@register_dataset("text_lm")
def text_lm(
    corpus=None,
    files=None,
    dataset=None,
    split="train",
    text_column="text",
    tokenizer="byte",
    seq_len: int = 256,
    val_fraction: float = 0.05,
    max_bytes: int | None = None,
    seed: int = 0,
    **_,
):
    """Packed language-model data, split by document into train / validation (seeded); no test split.

    Items: ``input_ids`` and ``labels`` (seq_len + 1,) long. ``info``: ``task`` "lm", ``vocab_size``,
    ``seq_len``, ``tokenizer`` (a :class:`Tokenizer`, for decoding samples).
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"data.seq_len must be a positive int, got {seq_len!r}")
    if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 1):
        raise ValueError(f"data.max_bytes must be a positive int or null, got {max_bytes!r}")
    docs = _read_documents(corpus, files, dataset, split, text_column, max_bytes)
    if len(docs) < 2:
        raise ValueError(f"need at least 2 documents to split train/validation, got {len(docs)}")
    tok = Tokenizer(tokenizer)
    order = np.random.default_rng(seed).permutation(len(docs))
    n_val = max(1, int(round(val_fraction * len(docs))))
    val_docs = [docs[i] for i in sorted(order[:n_val])]
    train_docs = [docs[i] for i in sorted(order[n_val:])]
    train = PackedLM(_stream(train_docs, tok), seq_len, tok.vocab_size)
    val = PackedLM(_stream(val_docs, tok), seq_len, tok.vocab_size)
    info = {"task": "lm", "vocab_size": tok.vocab_size, "seq_len": seq_len, "tokenizer": tok}
    return DataSplits(train, val, None, info)
