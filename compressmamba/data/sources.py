"""Document sources for the token store: each one describes itself cheaply (file names, sizes and
modification times, or a hub name, revision and split: the store's fingerprint) and streams its
documents one at a time (the corpus is never held in memory).

- ``corpus: python_stdlib``: the running interpreter's standard-library ``.py`` files.
- ``corpus: gensim_wiki``: the English Wikipedia excerpt (206 articles, 6.1 MB of wikitext, CC BY-SA)
  that ships inside gensim's wheel as test data: ``pip install --no-deps gensim`` places it; gensim
  itself is never imported. One document per article.
- ``files``: globs of ``.txt`` (one document per file), ``.jsonl``/``.json``, ``.parquet``, ``.csv``
  and ``.arrow`` files (one document per row's ``text_column``).
- ``dataset``: a folder written by ``datasets.save_to_disk``, or a hub dataset name (streamed).

Documents are ``bytes`` (read as is; the encoder repairs invalid UTF-8 and counts it) or ``str``.
"""

from __future__ import annotations

import glob
import json
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "turtledemo", "__pycache__", "lib2to3"}
_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet", ".csv", ".arrow")
_BATCH_ROWS = 1024


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


CORPORA = ("python_stdlib", "gensim_wiki")
GENSIM_WIKI = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def gensim_wiki_file() -> Path:
    """The Wikipedia excerpt inside an installed gensim (found without importing gensim)."""
    import importlib.util

    spec = importlib.util.find_spec("gensim")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        path = Path(root) / GENSIM_WIKI
        if path.is_file():
            return path
    where = f"gensim at {roots[0]} has no {GENSIM_WIKI}" if roots else "gensim is not installed"
    raise FileNotFoundError(
        f"data.corpus 'gensim_wiki' reads the Wikipedia excerpt in gensim's wheel, but {where}: "
        "run `pip install --no-deps gensim` (27 MB; nothing of it is imported)"
    )


class WikiXmlSource:
    """The pages of a (bz2-compressed) MediaWiki XML dump: one document per page's wikitext
    (redirect pages, a line each, are skipped)."""

    def __init__(self, path: Path, label: str):
        self.path, self.label = path, label

    def describe(self) -> dict:
        return {"kind": self.label, "files": _stat([self.path])}

    def total_bytes(self) -> int:
        return self.path.stat().st_size

    def documents(self) -> Iterator[str]:
        import bz2
        import xml.etree.ElementTree as ET

        with bz2.open(self.path) as f:
            for _, elem in ET.iterparse(f, events=("end",)):
                tag = elem.tag.rsplit("}", 1)[-1]
                if tag == "text":
                    if not (elem.text or "").lstrip().upper().startswith("#REDIRECT"):
                        yield elem.text or ""
                elif tag == "page":
                    elem.clear()


def _stat(paths: list[Path]) -> list[dict]:
    out = []
    for p in paths:
        st = p.stat()
        out.append({"path": str(p), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


class FileSource:
    """Local files (the standard library, or ``data.files`` globs), read in order."""

    def __init__(self, paths: list[Path], text_column: str = "text", label: str = "files"):
        self.paths, self.text_column, self.label = paths, text_column, label

    @classmethod
    def from_globs(cls, patterns, text_column: str) -> FileSource:
        if isinstance(patterns, (str, os.PathLike)):
            patterns = [patterns]
        if not isinstance(patterns, (list, tuple)) or not patterns:
            raise ValueError(f"data.files must be a path, a glob or a list of them, got {patterns!r}")
        paths, seen = [], set()
        for pattern in patterns:
            hits = sorted(glob.glob(os.path.expanduser(str(pattern)), recursive=True))
            hits = [h for h in hits if os.path.isfile(h)]
            if not hits:
                raise FileNotFoundError(f"data.files: nothing matches {str(pattern)!r}")
            for h in hits:
                p = Path(h).resolve()
                if p.suffix not in _SUFFIXES:
                    raise ValueError(f"data.files: {h} has an unsupported type; expected one of {list(_SUFFIXES)}")
                if p not in seen:
                    seen.add(p)
                    paths.append(p)
        return cls(paths, text_column)

    def describe(self) -> dict:
        d = {"kind": self.label, "files": _stat(self.paths)}
        if self.label != "python_stdlib":
            d["text_column"] = self.text_column
        return d

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths)

    def documents(self) -> Iterator[str | bytes]:
        for p in self.paths:
            yield from _READERS.get(p.suffix, _txt)(p, self.text_column)  # .py of the stdlib: whole files


def _txt(path: Path, _col) -> Iterator[bytes]:
    yield path.read_bytes()


def _jsonl(path: Path, col: str) -> Iterator[str]:
    with open(path, "rb") as f:
        head = f.read(1024).lstrip()
    if head.startswith(b"["):  # a JSON array of records (read whole: such files are small by nature)
        rows = json.loads(path.read_bytes().decode("utf-8", errors="replace"))
        for i, row in enumerate(rows):
            yield _text_of(row, col, f"{path} record {i}")
        return
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8", errors="replace"))
            except json.JSONDecodeError as e:
                raise ValueError(f"data.files: {path} line {lineno} is not valid JSON ({e.msg})") from None
            yield _text_of(row, col, f"{path} line {lineno}")


def _text_of(row, col: str, where: str) -> str:
    if not isinstance(row, dict) or col not in row:
        keys = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise ValueError(f"data.files: {where} has no {col!r} field (has {keys}); set data.text_column")
    text = row[col]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise ValueError(f"data.files: {where}: field {col!r} is {type(text).__name__}, expected a string")
    return text


def _column(names: list[str], col: str, where: str):
    if col not in names:
        raise ValueError(f"data.files: {where} has no {col!r} column (has {names}); set data.text_column")


def _arrow_batches(batches, col: str) -> Iterator[str | bytes]:
    for batch in batches:
        for t in batch.column(batch.schema.get_field_index(col)).to_pylist():
            yield "" if t is None else t


def _parquet(path: Path, col: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    _column(pf.schema_arrow.names, col, str(path))
    yield from _arrow_batches(pf.iter_batches(batch_size=_BATCH_ROWS, columns=[col]), col)


def _csv(path: Path, col: str) -> Iterator[bytes]:
    import pyarrow as pa
    from pyarrow import csv

    # the text column as binary: invalid UTF-8 is repaired (and counted) by the encoder, not fatal here
    reader = csv.open_csv(
        path,
        parse_options=csv.ParseOptions(newlines_in_values=True),
        convert_options=csv.ConvertOptions(column_types={col: pa.binary()}),
    )
    _column(reader.schema.names, col, str(path))
    yield from _arrow_batches(reader, col)


def _arrow(path: Path, col: str) -> Iterator[str]:
    import pyarrow as pa

    source = pa.memory_map(str(path))
    try:
        reader = pa.ipc.open_stream(source)  # what datasets writes
        batches = reader
    except pa.ArrowInvalid:
        reader = pa.ipc.open_file(source)
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    _column(reader.schema.names, col, str(path))
    yield from _arrow_batches(batches, col)


_READERS = {".txt": _txt, ".jsonl": _jsonl, ".json": _jsonl, ".parquet": _parquet, ".csv": _csv, ".arrow": _arrow}


class DiskDatasetSource:
    """A folder written by ``datasets.save_to_disk`` (a Dataset, or a DatasetDict and its ``split``)."""

    def __init__(self, path: Path, split: str, text_column: str):
        self.path, self.split, self.text_column = path, split, text_column

    def describe(self) -> dict:
        files = sorted(p for p in self.path.rglob("*") if p.is_file())
        return {"kind": "save_to_disk", "split": self.split, "text_column": self.text_column, "files": _stat(files)}

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*.arrow"))

    def documents(self) -> Iterator[str]:
        import datasets

        ds = datasets.load_from_disk(str(self.path))  # memory-mapped Arrow, not read into RAM
        if isinstance(ds, datasets.DatasetDict):
            if self.split not in ds:
                raise ValueError(f"data.split {self.split!r} is not in {self.path} (has {sorted(ds)})")
            ds = ds[self.split]
        _column(ds.column_names, self.text_column, str(self.path))
        batches = ds.select_columns([self.text_column]).with_format("arrow").iter(batch_size=_BATCH_ROWS)
        yield from _arrow_batches(batches, self.text_column)


class HubSource:
    """A hub dataset, streamed (online): the raw corpus never has to fit on disk beside the store.
    The fingerprint covers the name, config, revision and split as given: pin ``data.revision`` to
    a commit for a corpus that cannot change under the same store."""

    def __init__(self, name: str, config: str | None, revision: str | None, split: str, text_column: str):
        self.name, self.config, self.revision, self.split, self.text_column = name, config, revision, split, text_column

    def describe(self) -> dict:
        return {
            "kind": "hub",
            "name": self.name,
            "config": self.config,
            "revision": self.revision or "main",
            "split": self.split,
            "text_column": self.text_column,
        }

    def total_bytes(self) -> None:
        return None

    def documents(self) -> Iterator[str]:
        import datasets

        ds = datasets.load_dataset(self.name, self.config, split=self.split, revision=self.revision, streaming=True)
        for i, row in enumerate(ds):
            if self.text_column not in row:
                raise ValueError(
                    f"data.dataset {self.name!r} row {i} has no {self.text_column!r} column "
                    f"(has {sorted(row)}); set data.text_column"
                )
            yield row[self.text_column] or ""


def make_source(corpus, files, dataset, dataset_config, revision, split, text_column):
    """The one source a ``text_lm`` recipe names (exactly one of corpus, files, dataset)."""
    given = [k for k, v in (("corpus", corpus), ("files", files), ("dataset", dataset)) if v]
    if len(given) != 1:
        raise ValueError(
            f"text data needs exactly one of data.corpus ({' or '.join(CORPORA)}), data.files or data.dataset, "
            f"got {given or 'none'}"
        )
    if not isinstance(text_column, str) or not text_column:
        raise ValueError(f"data.text_column must be a column name, got {text_column!r}")
    if corpus is not None:
        if corpus == "gensim_wiki":
            return WikiXmlSource(gensim_wiki_file(), label="gensim_wiki")
        if corpus != "python_stdlib":
            raise ValueError(f"data.corpus must be one of {list(CORPORA)} or null, got {corpus!r}")
        return FileSource(python_stdlib_files(), text_column, label="python_stdlib")
    if files:
        return FileSource.from_globs(files, text_column)
    if not isinstance(dataset, str):
        raise ValueError(f"data.dataset must be a save_to_disk folder or a hub name, got {dataset!r}")
    path = Path(os.path.expanduser(dataset))
    if path.is_dir():
        if not any((path / n).is_file() for n in ("dataset_info.json", "dataset_dict.json", "state.json")):
            raise FileNotFoundError(f"data.dataset: {path} is a folder but not one written by datasets.save_to_disk")
        return DiskDatasetSource(path.resolve(), split, text_column)
    return HubSource(dataset, dataset_config, revision, split, text_column)
