import json
import os
import pickle

import numpy as np
import pytest
import torch

from compressmamba.data.text import python_stdlib_files, text_lm


def _stream(rows) -> np.ndarray:
    """A split's whole token stream (every document of the side, each followed by the separator)."""
    return rows.read(0, rows.length)


def test_stdlib_corpus_is_real_and_deterministic(tmp_path):
    files = python_stdlib_files()
    assert len(files) > 100 and all(f.suffix == ".py" for f in files)
    a = text_lm(corpus="python_stdlib", max_bytes=200_000, seq_len=32, seed=1, cache_dir=tmp_path)
    b = text_lm(corpus="python_stdlib", max_bytes=200_000, seq_len=32, seed=1, cache_dir=tmp_path)
    assert a.info["store_built"] and not b.info["store_built"] and a.info["store"] == b.info["store"]
    assert np.array_equal(_stream(a.train), _stream(b.train)) and a.info["vocab_size"] == 256
    assert a.info["task"] == "lm"
    item = a.train[3]
    assert item["input_ids"].shape == (33,) and torch.equal(item["input_ids"], item["labels"])
    # consecutive rows continue the same stream (packed): row i ends where row i+1 starts
    assert a.train[0]["input_ids"][-1] == a.train[1]["input_ids"][0]
    text = bytes(_stream(a.train)[:2000].tolist()).decode("utf-8", errors="replace")
    assert "def " in text or "import " in text


def test_local_txt_and_jsonl_files_split_by_document(tmp_path):
    for i in range(6):
        (tmp_path / f"doc{i}.txt").write_text(f"document number {i} " * 20)
    d = text_lm(files=str(tmp_path / "*.txt"), seq_len=16, val_fraction=0.34, seed=0, cache_dir=tmp_path / "c")
    assert len(d.val) > 0 and len(d.train) > len(d.val)
    val_text = bytes(_stream(d.val).tolist()).decode()
    train_text = bytes(_stream(d.train).tolist()).decode()
    val_ids = {w for w in val_text.split() if w.isdigit()}
    train_ids = {w for w in train_text.split() if w.isdigit()}
    assert val_ids and not (val_ids & train_ids)  # no document in both splits
    assert val_ids | train_ids == {str(i) for i in range(6)}
    jl = tmp_path / "data.jsonl"
    jl.write_text("\n".join(json.dumps({"text": f"line {i} " * 30}) for i in range(5)))
    d2 = text_lm(files=[str(jl)], seq_len=8, val_fraction=0.2, cache_dir=tmp_path / "c")
    assert len(d2.train) > 0 and d2.info["manifest"]["counts"]["documents"] == 5


def test_local_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "[UNK]": 1, "hello": 2, "world": 3, "foo": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    for i in range(3):
        (tmp_path / f"d{i}.txt").write_text("hello world foo bar " * 10)
    d = text_lm(
        files=str(tmp_path / "*.txt"),
        tokenizer=str(tmp_path / "tokenizer.json"),
        seq_len=4,
        val_fraction=0.34,
        cache_dir=tmp_path / "c",
    )
    assert d.info["vocab_size"] == 5
    assert set(_stream(d.train).tolist()) == {0, 1, 2, 3, 4}


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing matches"):
        text_lm(files=str(tmp_path / "missing*.txt"), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="corpus"):
        text_lm(corpus="wikipedia", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="exactly one of"):
        text_lm(corpus="python_stdlib", files=str(tmp_path / "*.txt"), cache_dir=tmp_path)
    (tmp_path / "a.txt").write_text("tiny")
    (tmp_path / "b.txt").write_text("tiny")
    with pytest.raises(ValueError, match="fewer than one sequence"):
        text_lm(files=str(tmp_path / "*.txt"), seq_len=64, cache_dir=tmp_path)
    (tmp_path / "c.md").write_text("markdown")
    with pytest.raises(ValueError, match=r"c\.md has an unsupported type"):
        text_lm(files=str(tmp_path / "*.md"), cache_dir=tmp_path)
    with pytest.raises(TypeError, match="seq_lenn"):  # a typo is not swallowed
        text_lm(files=str(tmp_path / "*.txt"), seq_lenn=8, cache_dir=tmp_path)


def test_byte_stream_is_the_documents_in_order_with_separators(tmp_path):
    rng = np.random.default_rng(7)
    docs = []
    for i in range(9):
        text = "".join(rng.choice(list("abc xyz_é\n")) for _ in range(int(rng.integers(40, 90))))
        (tmp_path / f"d{i}.txt").write_text(text, encoding="utf-8")
        docs.append(text.encode())
    kw = {"files": str(tmp_path / "*.txt"), "seq_len": 13, "val_fraction": 0.3, "cache_dir": tmp_path / "c"}
    d = text_lm(**kw, seed=4)
    val_bytes, got = bytes(_stream(d.val).tolist()), bytes(_stream(d.train).tolist())
    in_val = [x in val_bytes for x in docs]
    assert sum(in_val) == 3 and not any(x in got for x, v in zip(docs, in_val) if v)
    # each side = its documents in file order, each followed by the 0x00 separator
    assert got == b"".join(x + b"\0" for x, v in zip(docs, in_val) if not v)
    assert val_bytes == b"".join(x + b"\0" for x, v in zip(docs, in_val) if v)
    assert len(d.train) == (len(got) - 1) // 13
    for i in (0, 5, len(d.train) - 1):
        item = d.train[i]
        assert item["input_ids"].dtype == torch.long and item["input_ids"].shape == (14,)
        assert bytes(item["input_ids"].tolist()) == got[13 * i : 13 * i + 14]
    with pytest.raises(IndexError):
        d.train[len(d.train)]
    other, same = text_lm(**kw, seed=5), text_lm(**kw, seed=4)
    assert np.array_equal(_stream(same.val), _stream(d.val)) and not np.array_equal(_stream(other.val), _stream(d.val))
    assert other.info["store"] == d.info["store"] and not other.info["store_built"]  # a split is an index, not a copy


def test_tokenizer_json_matches_tokenizers_and_parquet_input(tmp_path):
    import datasets
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<|endoftext|>", "[UNK]"] + [f"w{i}" for i in range(40)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    rng = np.random.default_rng(2)
    texts = [" ".join(f"w{j}" for j in rng.integers(0, 45, size=30)) for _ in range(6)]  # w40+ are unknown
    datasets.Dataset.from_dict({"text": texts}).to_parquet(str(tmp_path / "c.parquet"))
    d = text_lm(
        files=[str(tmp_path / "c.parquet")],
        tokenizer=str(tmp_path),
        seq_len=7,
        val_fraction=0.34,
        seed=1,
        cache_dir=tmp_path / "c",
    )
    assert d.info["vocab_size"] == 42 and d.info["tokenizer"].eos == 0
    streams = [np.array(tok.encode(t).ids + [0]) for t in texts]
    whole = np.concatenate([_stream(d.train), _stream(d.val)])
    assert sorted(whole.tolist()) == sorted(np.concatenate(streams).tolist()) and 1 in set(whole.tolist())
    val = _stream(d.val)
    hits = [k for k, s in enumerate(streams) if len(s) <= len(val) and np.array_equal(val[: len(s)], s)]
    assert hits  # the validation stream starts with a whole document


def test_stdlib_files_skip_tests_and_site_packages():
    files = python_stdlib_files()
    parts = {p for f in files for p in f.parts}
    assert not parts & {"site-packages", "dist-packages", "test", "tests", "idlelib"}
    assert any(f.name == "os.py" for f in files)


def test_bad_arguments_name_the_argument(tmp_path):
    (tmp_path / "a.txt").write_text("some text " * 20)
    (tmp_path / "b.txt").write_text("more text " * 20)
    for kw, name in (
        ({"seq_len": 0}, "seq_len"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"max_bytes": -5}, "max_bytes"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"num_proc": 0}, "num_proc"),
        ({"text_column": ""}, "text_column"),
    ):
        with pytest.raises(ValueError, match=name):
            text_lm(files=str(tmp_path / "*.txt"), cache_dir=tmp_path, **kw)
    with pytest.raises(FileNotFoundError, match="expected a tokenizer file"):
        text_lm(files=str(tmp_path / "*.txt"), tokenizer=str(tmp_path / "missing.json"), cache_dir=tmp_path)


def test_rows_pickle_without_the_corpus(tmp_path):
    d = text_lm(corpus="python_stdlib", max_bytes=300_000, seq_len=32, cache_dir=tmp_path)
    blob = pickle.dumps(d.train)
    assert len(blob) < 10_000  # the path and the runs, not the tokens
    back = pickle.loads(blob)
    for i in (0, 17, len(d.train) - 1):
        assert torch.equal(back[i]["input_ids"], d.train[i]["input_ids"])


def test_rows_across_document_runs_match_a_reference_stream(tmp_path):
    """Rows are read from runs of consecutive documents in the token file: check every row of
    both sides against the stream rebuilt document by document from the store's own files."""
    from compressmamba.data.store import split_documents

    rng = np.random.default_rng(11)
    for i in range(40):
        (tmp_path / f"d{i:02d}.txt").write_bytes(rng.integers(1, 256, size=int(rng.integers(1, 60))).astype(np.uint8))
    d = text_lm(files=str(tmp_path / "*.txt"), seq_len=9, val_fraction=0.3, seed=3, cache_dir=tmp_path / "c")
    store_dir = d.info["store"]
    tokens = np.fromfile(f"{store_dir}/tokens.bin", dtype=np.uint16).astype(np.int64)
    ends = np.fromfile(f"{store_dir}/docs.idx", dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    is_val = split_documents(len(ends), 0.3, 3)
    for rows, flag in ((d.train, False), (d.val, True)):
        ref = np.concatenate([tokens[s:e] for s, e, v in zip(starts, ends, is_val) if v == flag])
        assert rows.length == len(ref) and len(rows) == (len(ref) - 1) // 9
        for i in range(len(rows)):
            assert np.array_equal(rows[i]["input_ids"].numpy(), ref[9 * i : 9 * i + 10]), i
        lo, hi = sorted(rng.integers(0, len(ref), size=2))
        assert np.array_equal(rows.read(int(lo), int(hi)), ref[lo:hi])


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_reading_rows_maps_nothing_and_a_truncated_file_is_named(tmp_path):
    """Rows are copied with pread: the token file is never mapped into the process, so its
    resident size does not grow with the rows read (a map's does: whole page-cache folios)."""
    d = text_lm(corpus="python_stdlib", max_bytes=300_000, seq_len=32, cache_dir=tmp_path)
    rng = np.random.default_rng(0)
    rows = [d.train[int(i)]["input_ids"] for i in rng.integers(0, len(d.train), size=200)]
    assert all(r.shape == (33,) for r in rows)
    assert "tokens.bin" not in open("/proc/self/smaps").read()
    tokens = os.path.join(d.info["store"], "tokens.bin")
    with open(tokens, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(OSError, match="tokens.bin holds 1000 bytes"):
        d.train[len(d.train) - 1]


_WIKI = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">
  <page><title>Alpha</title><revision>
    <text xml:space="preserve">'''Alpha''' is the [[first letter]] &amp; more.</text></revision></page>
  <page><title>Old</title><revision><text xml:space="preserve">#REDIRECT [[Alpha]]</text></revision></page>
  <page><title>Beta</title><revision><text xml:space="preserve">{{Infobox}}
Beta follows alpha.</text></revision></page>
</mediawiki>"""


def test_gensim_wiki_corpus_reads_the_pages_of_the_dump(tmp_path, monkeypatch):
    import bz2

    from compressmamba.data import sources

    root = tmp_path / "site" / "gensim"
    dump = root / sources.GENSIM_WIKI
    dump.parent.mkdir(parents=True)
    dump.write_bytes(bz2.compress(_WIKI.encode()))
    (root / "__init__.py").write_text("raise ImportError('gensim must not be imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert sources.gensim_wiki_file() == dump
    docs = list(sources.make_source("gensim_wiki", None, None, None, None, "train", "text").documents())
    assert docs == ["'''Alpha''' is the [[first letter]] & more.", "{{Infobox}}\nBeta follows alpha."]
    d = text_lm(corpus="gensim_wiki", seq_len=8, val_fraction=0.5, cache_dir=tmp_path / "cache")
    text = bytes(_stream(d.train).tolist() + _stream(d.val).tolist()).decode()
    assert "Beta follows alpha." in text and "first letter" in text and "REDIRECT" not in text


def test_gensim_wiki_corpus_without_gensim_says_how_to_install_it(monkeypatch):
    import importlib.util

    from compressmamba.data import sources

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"gensim is not installed: run `pip install --no-deps gensim`"):
        sources.gensim_wiki_file()
    with pytest.raises(ValueError, match=r"data.corpus must be one of \['python_stdlib', 'gensim_wiki'\]"):
        sources.make_source("wiki", None, None, None, None, "train", "text")
