"""The token store: a corpus tokenized once into a flat token file every rank shares.

Layout of ``<cache_dir>/<label>-<fingerprint>/``:

- ``tokens.bin``: every kept document's tokens, each followed by the end-of-text id, in source
  order; uint16 when the vocabulary fits, else uint32 (``manifest["dtype"]``).
- ``docs.idx``: int64 end offset of each document in ``tokens.bin`` (document k spans
  ``[ends[k-1], ends[k])``, ``ends[-1]`` = the token count): the document boundaries.
- ``manifest.json``: format version, the inputs the fingerprint hashes (sources with sizes and
  modification times or the hub name, revision and split; tokenizer identity and hash; caps),
  dtype, a CRC-32 of every ``BLOCK_BYTES`` block of ``tokens.bin`` (``checksums``), counts
  (documents, tokens, source bytes, replaced invalid UTF-8 sequences, empty
  documents dropped) and the build time.
- ``splits/<rule>-f<fraction>-s<seed>/``: a train/validation split by document (``split.json``
  and the runs of consecutive documents of each side, ``train.npy``/``val.npy``: rows
  ``(virtual start, file start, length)``). A split is an index, not a copy: another seed or
  fraction adds one in a fraction of a second.

One process builds (per shared file system), under ``<folder>.lock`` (created exclusively, its
modification time refreshed while the build runs); the others wait and then memory-map the
result. A build writes into ``<folder>.tmp-<host>-<pid>`` and is renamed when complete, so an
interrupted build never looks finished; a lock whose holder died (same host, pid gone) or that
has not been refreshed for ``STALE_S`` seconds is taken over and the build restarted. A finished
store whose files do not match its manifest (truncated, another format version, other inputs) is
rebuilt, never read. Every open checks a sample of the blocks against their checksums (a store
damaged since it was built is rebuilt), and readers check each block they read the first time
(:func:`verify_block`), so damage is refused before any of its tokens reach a model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text, publish_folder
from .tokenize import Tokenizer, encode_chunk, token_dtype

FORMAT_VERSION = 2  # 2: per-block checksums of tokens.bin
BLOCK_BYTES = 1 << 20  # tokens.bin is checksummed in blocks of this many bytes
SAMPLED_BLOCKS = 8  # blocks checked at every open (all of them in a store this small)
SPLIT_RULE = "blocks65536"  # the split rule's name, recorded in split.json
SPLIT_BLOCK = 65536  # documents per split block: memory of a split is bounded by the block
STALE_S = 120.0  # a build lock not refreshed for this long is taken over
HEARTBEAT_S = 10.0
CHUNK_BYTES = 1 << 20  # text per encode task: the build's memory is a few of these per worker


def default_cache_dir() -> Path:
    """``$COMPRESSMAMBA_CACHE/tokens`` if set, else ``$XDG_CACHE_HOME`` (or ``~/.cache``)
    ``/compressmamba/tokens``."""
    root = os.environ.get("COMPRESSMAMBA_CACHE")
    if root:
        return Path(os.path.expanduser(root)) / "tokens"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "compressmamba" / "tokens"


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def fingerprint(inputs: dict) -> str:
    """16 hex digits of sha256 over the canonical JSON of ``inputs``."""
    return hashlib.sha256(_canonical({"format_version": FORMAT_VERSION, **inputs}).encode()).hexdigest()[:16]


def _label(inputs: dict) -> str:
    src = inputs["source"]
    name = src.get("name") or src["kind"]
    return re.sub(r"[^A-Za-z0-9_.]+", "_", f"{name}-{inputs['tokenizer']['kind']}")[:60]


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1))


# --- the opened store ---------------------------------------------------------------------------
class TokenStore:
    """A finished store, memory-mapped: ``tokens`` (T,) and ``doc_ends`` (D,) int64."""

    def __init__(self, path: Path, manifest: dict):
        self.path, self.manifest = path, manifest
        self.dtype = np.dtype(manifest["dtype"])
        self.n_tokens, self.n_docs = manifest["counts"]["tokens"], manifest["counts"]["documents"]
        self.tokens = np.memmap(path / "tokens.bin", dtype=self.dtype, mode="r", shape=(self.n_tokens,))
        self.doc_ends = np.memmap(path / "docs.idx", dtype=np.int64, mode="r", shape=(self.n_docs,))

    @staticmethod
    def check(path: Path, inputs: dict) -> tuple[dict | None, str]:
        """The manifest of the store at ``path`` if it is complete and made from ``inputs``, else
        (None, the reason naming the file)."""
        mpath = path / "manifest.json"
        try:
            m = json.loads(mpath.read_text())
        except (OSError, ValueError) as e:
            return None, f"{mpath} is unreadable ({e})"
        if m.get("format_version") != FORMAT_VERSION:
            return None, f"{mpath} has format version {m.get('format_version')!r}, this library reads {FORMAT_VERSION}"
        if m.get("inputs") != inputs or m.get("fingerprint") != fingerprint(inputs):
            return None, f"{mpath} was made from other inputs (sources, tokenizer or caps) than its folder name says"
        try:
            n_tok, n_doc, itemsize = m["counts"]["tokens"], m["counts"]["documents"], np.dtype(m["dtype"]).itemsize
        except (KeyError, TypeError) as e:
            return None, f"{mpath} lacks {e}"
        for name, want in (("tokens.bin", n_tok * itemsize), ("docs.idx", n_doc * 8)):
            f = path / name
            size = f.stat().st_size if f.is_file() else None
            if size != want:
                return None, f"{f} holds {size} bytes, the manifest says {want} (truncated or replaced)"
        if n_doc and int(np.memmap(path / "docs.idx", dtype=np.int64, mode="r", shape=(n_doc,))[-1]) != n_tok:
            return None, f"{path / 'docs.idx'} does not end at the token count {n_tok}"
        sums = m.get("checksums") or {}
        crcs = sums.get("tokens.bin")
        if not isinstance(crcs, list) or not sums.get("block_bytes"):
            return None, f"{mpath} has no block checksums of tokens.bin"
        picks = np.unique(np.linspace(0, len(crcs) - 1, min(SAMPLED_BLOCKS, len(crcs))).round().astype(int))
        with open(path / "tokens.bin", "rb") as f:
            for b in picks.tolist():
                problem = verify_block(f.fileno(), b, sums["block_bytes"], crcs)
                if problem:
                    return None, f"{path / 'tokens.bin'} {problem}"
        return m, ""

    def split(self, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """Runs ``(R, 3)`` int64 of the train and validation documents, and ``split.json``."""
        key = f"{SPLIT_RULE}-f{val_fraction!r}-s{seed}"
        folder = self.path / "splits" / key
        info_path = folder / "split.json"
        if not info_path.is_file():
            self._write_split(folder, val_fraction, seed)
        info = json.loads(info_path.read_text())
        train = np.load(folder / "train.npy", mmap_mode="r", allow_pickle=False)
        val = np.load(folder / "val.npy", mmap_mode="r", allow_pickle=False)
        return train, val, info

    def _write_split(self, folder: Path, val_fraction: float, seed: int) -> None:
        is_val = split_documents(self.n_docs, val_fraction, seed)
        starts = np.concatenate([[0], self.doc_ends[:-1]]) if self.n_docs else np.zeros(0, np.int64)
        lengths = np.asarray(self.doc_ends) - starts
        runs = {side: _runs(starts, lengths, is_val == (side == "val")) for side in ("train", "val")}
        tmp = folder.with_name(f".{folder.name}.tmp-{socket.gethostname()}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for side, r in runs.items():
            np.save(tmp / f"{side}.npy", r, allow_pickle=False)
        info = {
            "rule": SPLIT_RULE,
            "val_fraction": val_fraction,
            "seed": seed,
            "documents": {"train": int((~is_val).sum()), "val": int(is_val.sum())},
            "tokens": {s: int(r[:, 2].sum()) for s, r in runs.items()},
        }
        (tmp / "split.json").write_text(json.dumps(info, indent=1))
        publish_folder(tmp, folder, replace=False)  # another rank may have finished the same split first


def verify_block(fd: int, block: int, block_bytes: int, crcs: list[int]) -> str | None:
    """None if block ``block`` of the file open as ``fd`` matches its CRC-32 in ``crcs``, else
    what is wrong (one phrase)."""
    if hasattr(os, "pread"):
        data = os.pread(fd, block_bytes, block * block_bytes)
    else:
        os.lseek(fd, block * block_bytes, os.SEEK_SET)
        data = os.read(fd, block_bytes)
    if zlib.crc32(data) != crcs[block]:
        return f"block {block} (bytes {block * block_bytes}-{block * block_bytes + len(data)}) fails its checksum"
    return None


class _BlockSums:
    """CRC-32 of each ``block_bytes`` block of a stream written in pieces of any size."""

    def __init__(self, block_bytes: int):
        self.block_bytes, self.crcs, self._crc, self._fill = block_bytes, [], 0, 0

    def update(self, data: bytes) -> None:
        view = memoryview(data)
        while len(view):
            take = min(self.block_bytes - self._fill, len(view))
            self._crc = zlib.crc32(view[:take], self._crc)
            self._fill += take
            view = view[take:]
            if self._fill == self.block_bytes:
                self.crcs.append(self._crc)
                self._crc, self._fill = 0, 0

    def finish(self) -> list[int]:
        return self.crcs + ([self._crc] if self._fill else [])


def split_documents(n_docs: int, val_fraction: float, seed: int) -> np.ndarray:
    """(n_docs,) bool, True for validation documents. Consecutive blocks of ``SPLIT_BLOCK``
    documents; in each block of m documents the first ``max(1, round(val_fraction · m))`` of a
    seeded permutation are validation (block 0 draws from ``default_rng(seed)``, block b from
    ``default_rng([seed, b])``), so the split depends only on the seed, the fraction and the
    document order."""
    is_val = np.zeros(n_docs, dtype=bool)
    for b, lo in enumerate(range(0, n_docs, SPLIT_BLOCK)):
        m = min(SPLIT_BLOCK, n_docs - lo)
        rng = np.random.default_rng(seed if b == 0 else [seed, b])
        n_val = max(1, int(round(val_fraction * m)))
        is_val[lo + rng.permutation(m)[:n_val]] = True
    return is_val


def _runs(starts: np.ndarray, lengths: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Maximal runs of consecutive kept documents: rows (virtual start, file start, length)."""
    idx = np.flatnonzero(keep)
    if len(idx) == 0:
        return np.zeros((0, 3), np.int64)
    first = np.concatenate([[True], np.diff(idx) > 1])
    run_of = np.cumsum(first) - 1
    file_start = starts[idx[first]]
    length = np.bincount(run_of, weights=lengths[idx], minlength=int(first.sum())).astype(np.int64)
    virtual = np.concatenate([[0], np.cumsum(length)[:-1]])
    return np.stack([virtual, file_start, length], axis=1).astype(np.int64)


# --- the build lock ------------------------------------------------------------------------------
class BuildLock:
    """An exclusive lock file beside the store; ``acquire()`` is non-blocking."""

    def __init__(self, path: Path):
        self.path, self._stop, self._thread = path, threading.Event(), None

    def acquire(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}, f)
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return True

    def _beat(self):
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def holder(self) -> dict | None:
        try:
            return {**json.loads(self.path.read_text()), "mtime": self.path.stat().st_mtime}
        except (OSError, ValueError):
            return None

    def break_if_stale(self) -> bool:
        """Remove the lock if its holder is gone; True if it was removed."""
        h = self.holder()
        if h is None:
            return False
        dead = h.get("host") == socket.gethostname() and not _pid_alive(h.get("pid", -1))
        if not dead and time.time() - h["mtime"] < STALE_S:
            return False
        if self.holder() == h:  # unchanged since judged stale
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            return True
        return False


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


# --- building --------------------------------------------------------------------------------------
def open_or_build(
    source,
    tok: Tokenizer,
    inputs: dict,
    cache_dir: Path,
    *,
    max_bytes: int | None,
    max_tokens: int | None,
    num_proc: int,
    chunk_bytes: int = CHUNK_BYTES,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
    poll_s: float = 0.5,
) -> tuple[TokenStore, bool]:
    """The store for ``inputs``: reused if complete, else built here or by another process.
    Returns (store, built_here)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    folder = cache_dir / f"{_label(inputs)}-{fingerprint(inputs)}"
    lock = BuildLock(folder.with_name(folder.name + ".lock"))
    said_wait = False
    while True:
        if folder.exists():
            manifest, why = TokenStore.check(folder, inputs)
            if manifest is not None:
                return TokenStore(folder, manifest), False
        if lock.acquire():
            try:
                if folder.exists():  # finished (or found broken) while we were taking the lock
                    manifest, why = TokenStore.check(folder, inputs)
                    if manifest is not None:
                        return TokenStore(folder, manifest), False
                    log(f"compressmamba: rebuilding the token store: {why}")
                    _remove(folder)
                manifest = _build(folder, source, tok, inputs, max_bytes, max_tokens, num_proc, chunk_bytes)
                return TokenStore(folder, manifest), True
            finally:
                lock.release()
        if lock.break_if_stale():
            log(f"compressmamba: took over the stale build lock {lock.path}")
            continue
        if not said_wait:
            h = lock.holder() or {}
            log(f"compressmamba: waiting for {h.get('host')}:{h.get('pid')} to build the token store {folder}")
            said_wait = True
        time.sleep(poll_s)


def _remove(folder: Path) -> None:
    trash = folder.with_name(f".{folder.name}.trash-{os.getpid()}")
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _chunks(docs: Iterable, chunk_bytes: int, max_bytes: int | None):
    """Lists of documents of about ``chunk_bytes`` each; with ``max_bytes``, whole documents until
    their raw size reaches it (the crossing document included). Yields (chunk, raw bytes)."""
    chunk, size, total = [], 0, 0
    for doc in docs:
        n = len(doc) if isinstance(doc, bytes) else len(doc.encode("utf-8"))
        chunk.append(doc)
        size += n
        total += n
        last = max_bytes is not None and total >= max_bytes
        if size >= chunk_bytes or last:
            yield chunk, size
            chunk, size = [], 0
        if last:
            return
    if chunk:
        yield chunk, size


def _encoded(chunks, tok: Tokenizer, dtype, num_proc: int):
    """Encoded chunks in order; with ``num_proc`` > 1 worker processes, at most 2 · num_proc
    chunks in flight (bounded memory whatever the corpus size)."""
    spec = tok.worker_spec()
    if num_proc <= 1:
        for chunk, size in chunks:
            yield encode_chunk(spec, chunk, tok.eos, dtype), size
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(num_proc, mp_context=mp.get_context("spawn")) as pool:
        pending = deque()
        try:
            for chunk, size in chunks:
                pending.append((pool.submit(encode_chunk, spec, chunk, tok.eos, dtype), size))
                if len(pending) >= 2 * num_proc:
                    fut, sz = pending.popleft()
                    yield fut.result(), sz
            while pending:
                fut, sz = pending.popleft()
                yield fut.result(), sz
        finally:
            for fut, _ in pending:
                fut.cancel()


def _build(folder, source, tok, inputs, max_bytes, max_tokens, num_proc, chunk_bytes) -> dict:
    from tqdm.auto import tqdm

    t0 = time.time()
    tmp = folder.with_name(f"{folder.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    for old in folder.parent.glob(f"{folder.name}.tmp-*"):  # interrupted builds: we hold the lock
        shutil.rmtree(old, ignore_errors=True)
    tmp.mkdir(parents=True)
    dtype = token_dtype(tok.vocab_size)
    counts = {"documents": 0, "tokens": 0, "source_bytes": 0, "replaced_invalid_utf8": 0, "empty_documents": 0}
    sums = _BlockSums(BLOCK_BYTES)
    bar = tqdm(total=source.total_bytes(), unit="B", unit_scale=True, desc="tokenizing", disable=None, leave=False)
    try:
        with open(tmp / "tokens.bin", "wb") as ftok, open(tmp / "docs.idx", "wb") as fidx:
            chunks = _chunks(source.documents(), chunk_bytes, max_bytes)
            for (ids, lengths, replaced, empty), size in _encoded(chunks, tok, dtype, num_proc):
                counts["source_bytes"] += size
                counts["replaced_invalid_utf8"] += replaced
                counts["empty_documents"] += empty
                ids, lengths, full = _cap(ids, lengths, counts["tokens"], max_tokens, tok.eos)
                ftok.write(ids.tobytes())
                sums.update(ids.tobytes())
                fidx.write((counts["tokens"] + np.cumsum(lengths)).astype(np.int64).tobytes())
                counts["tokens"] += int(lengths.sum())
                counts["documents"] += len(lengths)
                bar.update(size)
                if full:
                    break
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    if counts["tokens"] == counts["documents"]:  # nothing but separators
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"the sources hold no text ({counts['documents']} empty documents): {_where(inputs)}")
    manifest = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint(inputs),
        "inputs": inputs,
        "tokenizer": {"spec": tok.spec, **tok.identity()},
        "dtype": dtype.name,
        "checksums": {"algorithm": "crc32", "block_bytes": BLOCK_BYTES, "tokens.bin": sums.finish()},
        "counts": counts,
        "build_seconds": round(time.time() - t0, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_json(tmp / "manifest.json", manifest)
    publish_folder(tmp, folder, replace=True)  # under the build lock: whatever stands there is stale
    return manifest


def _cap(ids, lengths, have: int, max_tokens: int | None, eos: int):
    """Cut a chunk so the store holds at most ``max_tokens``: whole documents while they fit, the
    crossing one cut and closed by ``eos`` (if 2 tokens or more remain). Returns (ids, lengths, full)."""
    if max_tokens is None or have + len(ids) < max_tokens:
        return ids, lengths, max_tokens is not None and have + len(ids) >= max_tokens
    room = max_tokens - have
    ends = np.cumsum(lengths)
    k = int(np.searchsorted(ends, room, side="right"))  # documents that fit whole
    start = int(ends[k - 1]) if k else 0
    left = room - start
    if k < len(lengths) and left >= 2:
        ids = np.concatenate([ids[: start + left - 1], np.array([eos], ids.dtype)])
        lengths = np.concatenate([lengths[:k], [left]])
    else:
        ids, lengths = ids[:start], lengths[:k]
    return ids, lengths, True


def _where(inputs: dict) -> str:
    src = inputs["source"]
    if "files" in src:
        names = [f["path"] for f in src["files"]]
        return f"{len(names)} files ({', '.join(names[:3])}{' ...' if len(names) > 3 else ''})"
    return f"{src.get('kind')} {src.get('name')}"
