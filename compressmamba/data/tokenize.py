"""Tokenizers for the token store, and the chunk encoder its worker processes run.

A tokenizer is ``byte`` (ids 0–255, the end-of-text separator 0x00), a local ``tokenizer.json``, a
local Hugging Face tokenizer folder (``tokenizer_config.json`` beside the tokenizer files; a folder
with only ``tokenizer.json`` is read as that file), or a hub name (online, through transformers'
``AutoTokenizer``). Every non-byte tokenizer runs as its ``tokenizers`` backend: workers rebuild it
from its JSON string, so what they encode is exactly what the identity hash covers.

This module imports only numpy (tokenizers and transformers lazily): spawned workers start fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

_EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")
# Files that define a Hugging Face tokenizer folder (model weights beside them are not hashed).
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
)
_UTF8_FFFD = "\ufffd".encode()
_BYTE_FALLBACK = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def token_dtype(vocab_size: int) -> np.dtype:
    """The store's token dtype: uint16 when every id fits, else uint32."""
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"tokenizer vocabulary size must be a positive int, got {vocab_size!r}")
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise ValueError(f"tokenizer vocabulary of {vocab_size} ids does not fit uint32 (at most {1 << 32} ids)")


def _sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


class Tokenizer:
    """One of ``byte``, a ``tokenizer.json`` path, a tokenizer folder or a hub name.

    Attributes: ``spec`` (as given), ``kind`` (``byte``, ``tokenizer.json``, ``hf-folder``, ``hub``),
    ``vocab_size``, ``eos`` (the end-of-text id that separates documents), ``sha256`` (identity: the
    tokenizer's files, or for a hub name its serialised backend) and ``backend_json`` (the
    ``tokenizers`` JSON the workers encode with; None for bytes).
    """

    def __init__(self, spec: str = "byte"):
        if not isinstance(spec, str) or not spec:
            raise ValueError(
                f"data.tokenizer must be 'byte', a tokenizer.json path, a tokenizer folder or a hub name, got {spec!r}"
            )
        self.spec, self._backend, self.backend_json = spec, None, None
        if spec == "byte":
            self.kind, self.vocab_size, self.eos = "byte", 256, 0
            self.sha256 = hashlib.sha256(b"byte").hexdigest()
            return
        path = Path(os.path.expanduser(spec))
        if path.is_dir() and not (path / "tokenizer_config.json").is_file():
            path = path / "tokenizer.json"
        if path.is_dir():
            self._from_hf(str(path), "hf-folder")
            files = [path / n for n in _TOKENIZER_FILES if (path / n).is_file()]
            self.sha256 = _sha256_files(files)
        elif path.suffix == ".json" or path.exists():
            if not path.is_file():
                raise FileNotFoundError(f"data.tokenizer: expected a tokenizer file at {path}")
            from tokenizers import Tokenizer as HFTok

            try:
                backend = HFTok.from_file(str(path))
            except Exception as e:  # tokenizers raises a bare Exception on a malformed file
                raise ValueError(f"data.tokenizer: {path} is not a tokenizers JSON file ({e})") from None
            self._set_backend(backend, None, "tokenizer.json")
            self.sha256 = _sha256_files([path])
        else:
            self._from_hf(spec, "hub")
            self.sha256 = hashlib.sha256(f"{self.backend_json}\0{self.eos}".encode()).hexdigest()

    def _from_hf(self, name: str, kind: str):
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as e:
            raise FileNotFoundError(
                f"data.tokenizer {name!r} is not a local tokenizer file or folder and could not be loaded "
                f"from the hub: {e}"
            ) from e
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(f"data.tokenizer {name!r} has no fast (tokenizers) backend; convert it to tokenizer.json")
        self._set_backend(backend, tok.eos_token_id, kind, len(tok))

    def _set_backend(self, backend, eos: int | None, kind: str, vocab_size: int | None = None):
        self._backend, self.kind = backend, kind
        self.backend_json = backend.to_str()
        self.vocab_size = vocab_size or backend.get_vocab_size(with_added_tokens=True)
        if eos is None:
            ids = [backend.token_to_id(t) for t in _EOS_NAMES]
            eos = next((i for i in ids if i is not None), None)
        if eos is None:
            raise ValueError(
                f"data.tokenizer {self.spec!r} has no end-of-text token (looked for {list(_EOS_NAMES)}); "
                "add one to the tokenizer: it separates documents in the token store"
            )
        self.eos = int(eos)

    def identity(self) -> dict:
        """What the store's fingerprint and manifest record about the tokenizer."""
        return {"kind": self.kind, "sha256": self.sha256, "vocab_size": self.vocab_size, "eos_id": self.eos}

    def worker_spec(self) -> tuple:
        """A picklable description that :func:`encode_chunk` rebuilds the tokenizer from."""
        return ("byte",) if self.kind == "byte" else ("json", self.backend_json)

    def encode(self, text: str | bytes) -> np.ndarray:
        """Token ids (int64) of one document, without the end-of-text separator."""
        ids, lengths, _, _ = encode_chunk(self.worker_spec(), [text], self.eos, np.dtype(np.uint32))
        return ids[: lengths[0] - 1].astype(np.int64) if len(lengths) else np.zeros(0, np.int64)

    def token_bytes(self) -> np.ndarray:
        """How many bytes of text each id stands for, (vocab_size,) int64: what bits per byte
        divides by. ``byte``: 1 each (0x00, the end of text, too). A byte-level BPE token (GPT-2's
        alphabet: one character per byte) counts its characters; a byte-fallback token ``<0xAB>``
        one byte; an added token and any other token its UTF-8 text, a SentencePiece word start
        ``▁`` as a space. A special token (the end of text) counts one byte, like the byte
        tokenizer's 0x00, so both count the same bytes for the same documents."""
        out = np.ones(self.vocab_size, np.int64)
        if self._backend is None:
            return out
        spec = json.loads(self.backend_json)
        byte_level = "ByteLevel" in json.dumps(spec.get("decoder"))
        added = {t["id"]: t for t in spec.get("added_tokens") or []}  # matched in raw text, before the model
        for tok, i in self._backend.get_vocab(with_added_tokens=True).items():
            if i >= len(out) or (i in added and added[i].get("special")):
                continue
            if i in added:
                out[i] = len(added[i]["content"].encode())
            elif byte_level:
                out[i] = len(tok)
            elif _BYTE_FALLBACK.fullmatch(tok):
                out[i] = 1
            else:
                out[i] = len(tok.replace("\u2581", " ").encode())
        return out

    def decode(self, ids) -> str:
        if self._backend is None:
            return bytes(int(i) for i in ids).decode("utf-8", errors="replace")
        return self._backend.decode([int(i) for i in ids])


def as_text(doc: str | bytes) -> tuple[str, int]:
    """``doc`` as str and the number of invalid UTF-8 sequences replaced by U+FFFD."""
    if isinstance(doc, str):
        return doc, 0
    try:
        return doc.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = doc.decode("utf-8", errors="replace")
        return text, text.count("\ufffd") - doc.count(_UTF8_FFFD)  # U+FFFD already in the file is not a repair


_WORKER_CACHE: dict = {}


def _backend_for(spec: tuple):
    if spec[0] == "byte":
        return None
    key = hashlib.sha256(spec[1].encode()).hexdigest()
    if key not in _WORKER_CACHE:
        from tokenizers import Tokenizer as HFTok

        _WORKER_CACHE.clear()
        _WORKER_CACHE[key] = HFTok.from_str(spec[1])
    return _WORKER_CACHE[key]


def _byte_ids(doc: str | bytes) -> tuple[np.ndarray, int]:
    if isinstance(doc, bytes):
        text, bad = as_text(doc)
        raw = doc if not bad else text.encode("utf-8")
    else:
        raw, bad = doc.encode("utf-8"), 0
    return np.frombuffer(raw, dtype=np.uint8), bad


def encode_chunk(spec: tuple, docs: list, eos: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Encode a chunk of documents into one flat array, each document followed by ``eos``.

    Returns ``ids`` (T,) ``dtype``, ``lengths`` (n_docs,) int64 (tokens per document, the separator
    included), the number of replaced invalid UTF-8 sequences and of empty documents (kept as a
    lone separator, so document indices, and with them the split, follow the sources). Raises
    when an id does not fit ``dtype`` (never silently wrapped).
    """
    backend = _backend_for(spec)
    replaced, empty, parts, lengths = 0, 0, [], []
    if backend is None:
        for doc in docs:
            ids, bad = _byte_ids(doc)
            replaced += bad
            empty += len(ids) == 0
            parts += [ids, np.array([eos], np.uint8)]
            lengths.append(len(ids) + 1)
    else:
        texts = []
        for doc in docs:
            text, bad = as_text(doc)
            replaced += bad
            empty += not text
            texts.append(text)
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast: no offsets, less memory
        for enc in encode(texts, add_special_tokens=False):
            ids = np.asarray(enc.ids, dtype=np.int64)
            parts += [ids, np.array([eos], np.int64)]
            lengths.append(len(ids) + 1)
    if not parts:
        return np.zeros(0, dtype), np.zeros(0, np.int64), replaced, empty
    flat = np.concatenate(parts)
    top = int(flat.max())
    if top > np.iinfo(dtype).max:
        raise ValueError(f"tokenizer produced id {top}, beyond the store's {dtype} tokens (vocabulary too small?)")
    return flat.astype(dtype, copy=False), np.asarray(lengths, np.int64), replaced, empty
