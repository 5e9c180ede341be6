"""Language-model data: packed rows of a token store read by offset (see :mod:`.store`).

Corpora: ``corpus: python_stdlib`` (the running interpreter's own standard-library sources: real
text that always exists), ``corpus: gensim_wiki`` (206 English Wikipedia articles of wikitext that
ship in gensim's wheel: ``pip install --no-deps gensim``), ``files: [paths or globs]`` (.txt,
.jsonl/.json, .parquet, .csv, .arrow; a ``text`` column), or ``dataset``: a
``datasets.save_to_disk`` folder or a hub name (streamed, online). Tokenizers: ``byte`` (vocab
256, no download), a local ``tokenizer.json``, a local tokenizer folder, or a hub name. The corpus
is tokenized once into the store (built on first use, or ahead of time by ``compressmamba
prepare-data``); a run then reads no raw text. Documents are split into train/validation by
document (seeded); each side is its documents in source order, each followed by the end-of-text
separator, cut into packed rows of ``seq_len + 1`` tokens read from the token file by offset:
items ``{"input_ids", "labels"}`` (labels == input_ids; the model shifts).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..registry import DataSplits, register_dataset
from .sources import make_source, python_stdlib_files
from .store import TokenStore, default_cache_dir, open_or_build
from .tokenize import Tokenizer, token_dtype

__all__ = ["PackedRows", "Tokenizer", "prepare_store", "python_stdlib_files", "text_lm"]


class PackedRows(Dataset):
    """Rows of ``seq_len + 1`` consecutive tokens of one side of a split (consecutive rows share
    one token, so every token but the first is a target exactly once).

    The side's stream is the concatenation of ``runs`` (R, 3) int64 rows (virtual start, start in
    the token file, length); row i is stream positions ``[i·seq_len, (i+1)·seq_len + 1)``, read
    from the token file by offset. Items: ``input_ids`` (seq_len + 1,) long and ``labels`` (the
    same tensor). Pickles as the file's path (DataLoader workers reopen it).

    Rows are read with ``os.pread`` rather than through a memory map: on kernels that keep the
    page cache in large folios, every fault maps a whole folio (hundreds of KB for a 4 KB row),
    so a mapped store's resident size creeps towards the file's size over a run. ``pread``
    copies only the row, and the page cache stays shared by every rank either way.
    """

    def __init__(
        self,
        tokens_path: Path,
        dtype: np.dtype,
        n_tokens: int,
        runs: np.ndarray,
        seq_len: int,
        side: str,
        *,
        checksums: dict | None = None,
        vocab_size: int | None = None,
    ):
        self.tokens_path, self.dtype = Path(tokens_path), np.dtype(dtype)
        self.checksums, self.vocab_size = checksums, vocab_size  # manifest["checksums"]; ids must be below
        self._verified = set()  # blocks of the token file checked in this process
        self.n_tokens, self.seq_len = n_tokens, seq_len
        self.runs = np.ascontiguousarray(runs, dtype=np.int64)
        self._vstart = np.ascontiguousarray(self.runs[:, 0])  # searched once per row: keep it contiguous
        self.length = int(self.runs[-1, 0] + self.runs[-1, 2]) if len(self.runs) else 0  # tokens in the stream
        self.n = (self.length - 1) // seq_len if self.length else 0
        if self.n < 1:
            raise ValueError(
                f"the {side} split has {self.length} tokens, fewer than one sequence of seq_len {seq_len} + 1 "
                "(lower data.seq_len, change data.val_fraction or add text)"
            )
        self._fd, self._pid = None, None

    def __getstate__(self):
        return {**self.__dict__, "_fd": None, "_pid": None, "_verified": set()}

    def __del__(self):
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)

    def _tokens(self, start: int, n: int) -> np.ndarray:
        """``n`` tokens of the file from token ``start``."""
        if not hasattr(os, "pread"):  # no pread (Windows): read through a map
            return np.memmap(self.tokens_path, dtype=self.dtype, mode="r", shape=(self.n_tokens,))[start : start + n]
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.tokens_path, os.O_RDONLY), os.getpid()
        size = self.dtype.itemsize
        if self.checksums:
            self._verify(start * size, (start + n) * size)
        raw = os.pread(self._fd, n * size, start * size)
        if len(raw) != n * size:
            have = os.fstat(self._fd).st_size
            raise OSError(
                f"{self.tokens_path} holds {have} bytes, a row needs bytes up to {(start + n) * size}: "
                "the token store was truncated after it was opened"
            )
        return np.frombuffer(raw, dtype=self.dtype)

    def _verify(self, lo: int, hi: int) -> None:
        """Check the blocks holding bytes [lo, hi) of the token file, once per process."""
        from .store import verify_block

        bb, crcs = self.checksums["block_bytes"], self.checksums["tokens.bin"]
        for b in range(lo // bb, (hi - 1) // bb + 1):
            if b in self._verified:
                continue
            problem = verify_block(self._fd, b, bb, crcs)
            if problem:
                raise ValueError(
                    f"{self.tokens_path} {problem}: the token store was damaged after it was built; refused. "
                    f"Delete {self.tokens_path.parent} (or run compressmamba prepare-data) to rebuild it"
                )
            self._verified.add(b)

    def _check_ids(self, x: np.ndarray, start: int) -> None:
        """Token ids at or above the vocabulary never reach the embedding."""
        if self.vocab_size is not None and len(x) and int(x.max()) >= self.vocab_size:
            i = int(np.argmax(x >= self.vocab_size))
            raise ValueError(
                f"{self.tokens_path}: token id {int(x[i])} at stream position {start + i} is outside the vocabulary "
                f"of {self.vocab_size}: the token store does not belong to this tokenizer or is damaged; "
                f"delete {self.tokens_path.parent} (or run compressmamba prepare-data) to rebuild it"
            )

    def __len__(self):
        return self.n

    def read(self, start: int, stop: int) -> np.ndarray:
        """Stream positions ``[start, stop)`` as an int64 array (stop - start,)."""
        if not 0 <= start <= stop <= self.length:
            raise IndexError(f"stream slice [{start}, {stop}) outside [0, {self.length}]")
        out = np.empty(stop - start, dtype=np.int64)
        j = int(np.searchsorted(self._vstart, start, side="right")) - 1
        pos = start
        while pos < stop:
            v0, f0, n = (int(x) for x in self.runs[j])
            take = min(v0 + n - pos, stop - pos)
            out[pos - start : pos - start + take] = self._tokens(f0 + pos - v0, take)
            pos += take
            j += 1
        return out

    def __getitem__(self, i):
        if not -self.n <= i < self.n:
            raise IndexError(f"row {i} out of range for {self.n} rows")
        i %= self.n
        ids = self.read(i * self.seq_len, (i + 1) * self.seq_len + 1)
        self._check_ids(ids, i * self.seq_len)
        x = torch.from_numpy(ids)
        return {"input_ids": x, "labels": x}


def input_repairs(manifest: dict) -> str | None:
    """What building the store changed in its input (the line prepare-data prints), or None."""
    c = manifest.get("counts", {})
    bad, empty = c.get("replaced_invalid_utf8", 0), c.get("empty_documents", 0)
    if not (bad or empty):
        return None
    return f"repaired {bad:,} invalid UTF-8 sequences; {empty:,} empty documents"


def _check_args(seq_len, val_fraction, max_bytes, max_tokens, seed, num_proc):
    if not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction!r}")
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
        raise ValueError(f"data.seq_len must be a positive int, got {seq_len!r}")
    for name, v in (("max_bytes", max_bytes), ("max_tokens", max_tokens), ("num_proc", num_proc)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"data.{name} must be a positive int or null, got {v!r}")
    if max_tokens is not None and max_tokens < 2:
        raise ValueError(f"data.max_tokens must be at least 2 (one token and a separator), got {max_tokens}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")


def prepare_store(
    *,
    corpus=None,
    files=None,
    dataset=None,
    dataset_config=None,
    revision=None,
    split="train",
    text_column="text",
    tokenizer="byte",
    max_bytes=None,
    max_tokens=None,
    cache_dir=None,
    num_proc=None,
    log=None,
) -> tuple[TokenStore, Tokenizer, bool]:
    """Open the token store of these inputs, building it first if needed (one process per file
    system builds; the others wait). Returns (store, tokenizer, built_here)."""
    source = make_source(corpus, files, dataset, dataset_config, revision, split, text_column)
    tok = Tokenizer(tokenizer)
    token_dtype(tok.vocab_size)  # a vocabulary beyond uint32 fails here, before any work
    inputs = {
        "source": source.describe(),
        "tokenizer": tok.identity(),
        "max_bytes": max_bytes,
        "max_tokens": max_tokens,
    }
    if num_proc is None:  # bytes need no tokenizing work; BPE spreads over the cores
        num_proc = 1 if tok.kind == "byte" else min(8, os.cpu_count() or 1)
    root = Path(os.path.expanduser(str(cache_dir))) if cache_dir else default_cache_dir()
    kw = {"log": log} if log else {}
    store, built = open_or_build(
        source, tok, inputs, root, max_bytes=max_bytes, max_tokens=max_tokens, num_proc=num_proc, **kw
    )
    return store, tok, built


@register_dataset("text_lm")
def text_lm(
    *,
    corpus: str | None = None,
    files: str | list[str] | None = None,
    dataset: str | None = None,
    dataset_config: str | None = None,
    revision: str | None = None,
    split: str = "train",
    text_column: str = "text",
    tokenizer: str = "byte",
    seq_len: int = 256,
    val_fraction: float = 0.05,
    max_bytes: int | None = None,
    max_tokens: int | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
    num_proc: int | None = None,
):
    """Packed language-model data, split by document into train / validation (seeded); no test split.

    ``split`` and ``dataset_config``/``revision`` select the hub or save_to_disk split, config and
    revision; ``max_bytes`` takes whole documents until their raw size reaches it; ``max_tokens``
    caps the store; ``cache_dir`` (default :func:`.store.default_cache_dir`) holds the store;
    ``num_proc`` tokenizer processes build it. Items: ``input_ids`` and ``labels`` (seq_len + 1,)
    long. ``info``: ``task`` "lm", ``vocab_size``, ``seq_len``, ``tokenizer`` (a :class:`Tokenizer`,
    for decoding samples), ``store`` (the store's folder), ``store_built`` (whether this call built
    it), ``manifest`` and ``split`` (the store's and the split's JSON records).
    """
    _check_args(seq_len, val_fraction, max_bytes, max_tokens, seed, num_proc)
    store, tok, built = prepare_store(
        corpus=corpus,
        files=files,
        dataset=dataset,
        dataset_config=dataset_config,
        revision=revision,
        split=split,
        text_column=text_column,
        tokenizer=tokenizer,
        max_bytes=max_bytes,
        max_tokens=max_tokens,
        cache_dir=cache_dir,
        num_proc=num_proc,
    )
    if store.n_docs < 2:
        raise ValueError(f"need at least 2 documents to split train/validation, got {store.n_docs} in {store.path}")
    train_runs, val_runs, split_info = store.split(float(val_fraction), seed)
    sums, vocab = store.manifest.get("checksums"), tok.vocab_size
    rows = lambda runs, side: PackedRows(
        store.path / "tokens.bin", store.dtype, store.n_tokens, runs, seq_len, side, checksums=sums, vocab_size=vocab
    )
    info = {"task": "lm", "vocab_size": tok.vocab_size, "seq_len": seq_len, "tokenizer": tok}
    info.update(store=str(store.path), store_built=built, manifest=store.manifest, split=split_info)
    return DataSplits(rows(train_runs, "train"), rows(val_runs, "validation"), None, info)
