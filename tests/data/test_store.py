"""The token store: build, reuse, rebuild, sources, tokenizers, bad input, several processes."""

import json
import os
import threading

import numpy as np
import pytest

from compressmamba.data import store as store_mod
from compressmamba.data.sources import FileSource, python_stdlib_files
from compressmamba.data.store import BuildLock, _runs, split_documents
from compressmamba.data.text import prepare_store, text_lm
from compressmamba.data.tokenize import Tokenizer, token_dtype

EOT = "<|endoftext|>"


def _stdlib_texts(n_files: int = 25) -> list[str]:
    return [f.read_text(encoding="utf-8", errors="replace") for f in python_stdlib_files()[:n_files]]


@pytest.fixture(scope="module")
def bpe_path(tmp_path_factory):
    """A real byte-level BPE tokenizer trained here on standard-library text (no download)."""
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_stdlib_texts(), trainer=trainer)
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tok.save(str(path))
    return path


def _corpus(root, n=8, seed=0):
    """Real text: slices of standard-library files, one .txt per document."""
    root.mkdir(parents=True, exist_ok=True)
    texts = _stdlib_texts(n)
    rng = np.random.default_rng(seed)
    docs = []
    for i, t in enumerate(texts):
        a = int(rng.integers(0, max(1, len(t) - 3000)))
        doc = t[a : a + int(rng.integers(500, 3000))]
        (root / f"doc{i:02d}.txt").write_text(doc, encoding="utf-8")
        docs.append(doc)
    return docs


def _tokens(store):
    return np.asarray(store.tokens).astype(np.int64)


def _doc_list(store):
    ends = np.asarray(store.doc_ends)
    starts = np.concatenate([[0], ends[:-1]])
    return [_tokens(store)[s:e] for s, e in zip(starts, ends)]


# --- tokenizers ---------------------------------------------------------------------------------
def test_bpe_store_holds_exactly_the_tokenizers_ids(tmp_path, bpe_path):
    from tokenizers import Tokenizer as HFTok

    docs = _corpus(tmp_path / "txt")
    store, tok, built = prepare_store(files=str(tmp_path / "txt/*.txt"), tokenizer=str(bpe_path), cache_dir=tmp_path)
    ref = HFTok.from_file(str(bpe_path))
    eos = ref.token_to_id(EOT)
    assert built and tok.eos == eos and tok.vocab_size == ref.get_vocab_size() and store.dtype == np.uint16
    got = _doc_list(store)
    assert len(got) == len(docs)
    for g, doc in zip(got, docs):
        want = ref.encode(doc, add_special_tokens=False).ids + [eos]
        assert g.tolist() == want
        assert ref.decode(g[:-1].tolist()) == doc  # byte-level BPE round-trips real text
    m = store.manifest
    assert m["tokenizer"]["sha256"] == tok.sha256 and m["tokenizer"]["eos_id"] == eos
    assert m["counts"]["tokens"] == sum(len(g) for g in got) and m["dtype"] == "uint16"


def test_hf_tokenizer_folder_and_hub_name(tmp_path, bpe_path, monkeypatch):
    from tokenizers import Tokenizer as HFTok
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = tmp_path / "hf"
    PreTrainedTokenizerFast(tokenizer_object=HFTok.from_file(str(bpe_path)), eos_token=EOT).save_pretrained(folder)
    t = Tokenizer(str(folder))
    ref = HFTok.from_file(str(bpe_path))
    assert t.kind == "hf-folder" and t.eos == ref.token_to_id(EOT)
    text = _stdlib_texts(3)[2][:2000]
    assert t.encode(text).tolist() == ref.encode(text, add_special_tokens=False).ids
    # a hub name goes through AutoTokenizer (online in real use; here it resolves to the folder)
    real = AutoTokenizer.from_pretrained
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda name, **kw: real(str(folder), **kw))
    hub = Tokenizer("someone/some-tokenizer")
    assert hub.kind == "hub" and hub.eos == t.eos and hub.encode(text).tolist() == t.encode(text).tolist()
    assert hub.sha256 != t.sha256  # different identities: a hub name is hashed by its serialised backend


def test_tokenizer_without_end_of_text_is_refused(tmp_path):
    from tokenizers import Tokenizer as HFTok
    from tokenizers import models

    HFTok(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="no end-of-text token"):
        Tokenizer(str(tmp_path / "tokenizer.json"))


def test_a_file_that_is_not_a_tokenizer_is_named(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"\x00\x01 not json")
    with pytest.raises(ValueError, match=r"tokenizer\.model is not a tokenizers JSON file"):
        Tokenizer(str(tmp_path / "tokenizer.model"))


def test_token_dtype_and_a_vocabulary_beyond_uint32(tmp_path):
    assert token_dtype(256) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(1 << 32) == np.uint32
    with pytest.raises(ValueError, match="does not fit uint32"):
        token_dtype((1 << 32) + 1)


def test_a_vocabulary_beyond_uint32_is_refused_before_building(tmp_path, monkeypatch):
    from compressmamba.data import text

    class Huge(Tokenizer):
        def __init__(self, spec):
            super().__init__("byte")
            self.vocab_size = (1 << 32) + 1

    monkeypatch.setattr(text, "Tokenizer", Huge)
    (tmp_path / "a.txt").write_text("text " * 10)
    with pytest.raises(ValueError, match="4294967297 ids does not fit uint32"):
        prepare_store(files=str(tmp_path / "a.txt"), cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_large_vocabulary_stores_uint32(tmp_path):
    from tokenizers import Tokenizer as HFTok
    from tokenizers import models, pre_tokenizers

    words = [EOT, "[UNK]"] + [f"w{i}" for i in range(70_000)]
    tok = HFTok(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    rng = np.random.default_rng(5)
    ids = [rng.integers(65_000, 70_000, size=50) for _ in range(3)]
    for k, row in enumerate(ids):
        (tmp_path / f"d{k}.txt").write_text(" ".join(f"w{i}" for i in row))
    store, _, _ = prepare_store(
        files=str(tmp_path / "*.txt"), tokenizer=str(tmp_path / "tokenizer.json"), cache_dir=tmp_path
    )
    assert store.dtype == np.uint32
    assert [d.tolist() for d in _doc_list(store)] == [(row + 2).tolist() + [0] for row in ids]  # ids above 65535 intact


# --- reuse and rebuild ------------------------------------------------------------------------------
def test_reuse_reads_no_source_and_changes_build_anew(tmp_path, bpe_path, monkeypatch):
    _corpus(tmp_path / "txt")
    kw = {"files": str(tmp_path / "txt/*.txt"), "cache_dir": tmp_path / "cache"}
    a, _, built = prepare_store(**kw)
    assert built

    def no_reading(self):
        raise AssertionError("a reused store must not read its sources")

    monkeypatch.setattr(FileSource, "documents", no_reading)
    b, _, built = prepare_store(**kw)
    assert not built and b.path == a.path
    with pytest.raises(AssertionError, match="must not read"):  # another tokenizer: a new store
        prepare_store(**kw, tokenizer=str(bpe_path))
    monkeypatch.undo()
    c, _, built = prepare_store(**kw, tokenizer=str(bpe_path))
    assert built and c.path != a.path
    d, _, built = prepare_store(**kw, max_tokens=1000)
    assert built and d.path not in (a.path, c.path)
    f = tmp_path / "txt/doc03.txt"  # a source changes: size and mtime
    f.write_text(f.read_text() + "\n# one more line\n")
    e, _, built = prepare_store(**kw)
    assert built and e.path != a.path and e.n_tokens == a.n_tokens + len("\n# one more line\n")


def test_truncated_tokens_or_foreign_manifest_are_rebuilt(tmp_path, bpe_path):
    _corpus(tmp_path / "txt")
    kw = {"files": str(tmp_path / "txt/*.txt"), "cache_dir": tmp_path / "cache"}
    logs = []
    good, _, _ = prepare_store(**kw)
    want = _tokens(good).copy()
    tok_file = good.path / "tokens.bin"
    with open(tok_file, "r+b") as f:
        f.truncate(tok_file.stat().st_size - 6)
    why = store_mod.TokenStore.check(good.path, good.manifest["inputs"])[1]
    assert "tokens.bin" in why and "truncated" in why
    again, _, built = prepare_store(**kw, log=logs.append)
    assert built and np.array_equal(_tokens(again), want) and "tokens.bin" in logs[-1]
    # another format version
    mpath = again.path / "manifest.json"
    m = json.loads(mpath.read_text())
    mpath.write_text(json.dumps({**m, "format_version": 0}))
    third, _, built = prepare_store(**kw, log=logs.append)
    assert built and "format version 0" in logs[-1] and np.array_equal(_tokens(third), want)
    # a store made with another tokenizer, put where this one's should be: never reused
    other, _, _ = prepare_store(**kw, tokenizer=str(bpe_path))
    import shutil

    shutil.rmtree(third.path)
    shutil.copytree(other.path, third.path)
    fourth, tok, built = prepare_store(**kw, log=logs.append)
    assert built and "other inputs" in logs[-1] and tok.kind == "byte" and np.array_equal(_tokens(fourth), want)


def test_interrupted_build_never_looks_finished(tmp_path):
    _corpus(tmp_path / "txt")
    kw = {"files": str(tmp_path / "txt/*.txt"), "cache_dir": tmp_path / "cache"}
    calls = {"n": 0}
    real = store_mod.encode_chunk

    def dies_on_second_chunk(*a):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a)

    store_mod.encode_chunk = dies_on_second_chunk
    try:
        with pytest.raises(KeyboardInterrupt):
            store_mod.open_or_build(
                *_source_tok_inputs(**kw), max_bytes=None, max_tokens=None, num_proc=1, chunk_bytes=2000
            )
    finally:
        store_mod.encode_chunk = real
    cache = tmp_path / "cache" / "tokens"
    assert not [p for p in cache.iterdir() if not p.name.startswith(".")]  # no folder, no lock left behind
    # a build killed hard leaves its temporary folder and its lock: the next run takes over
    src, tok, inputs, root = _source_tok_inputs(**kw)
    folder = root / f"{store_mod._label(inputs)}-{store_mod.fingerprint(inputs)}"
    (folder.parent / f"{folder.name}.tmp-somehost-1").mkdir(parents=True)
    (folder.parent / f"{folder.name}.tmp-somehost-1" / "tokens.bin").write_bytes(b"\1\2")
    dead = {"host": __import__("socket").gethostname(), "pid": _dead_pid(), "started": 0}
    (folder.parent / f"{folder.name}.lock").write_text(json.dumps(dead))
    logs = []
    s, built = store_mod.open_or_build(
        src, tok, inputs, root, max_bytes=None, max_tokens=None, num_proc=1, log=logs.append
    )
    assert built and "stale build lock" in logs[0] and sorted(p.name for p in root.iterdir()) == [folder.name]
    assert s.n_docs == 8


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _source_tok_inputs(files, cache_dir, tokenizer="byte"):
    from compressmamba.data.sources import make_source

    src = make_source(None, files, None, None, None, "train", "text")
    tok = Tokenizer(tokenizer)
    inputs = {"source": src.describe(), "tokenizer": tok.identity(), "max_bytes": None, "max_tokens": None}
    return src, tok, inputs, cache_dir / "tokens"


def test_waiters_wait_for_the_builder_then_map_its_store(tmp_path):
    _corpus(tmp_path / "txt")
    src, tok, inputs, root = _source_tok_inputs(str(tmp_path / "txt/*.txt"), tmp_path / "cache")
    root.mkdir(parents=True)
    folder = root / f"{store_mod._label(inputs)}-{store_mod.fingerprint(inputs)}"
    lock = BuildLock(folder.with_name(folder.name + ".lock"))
    assert lock.acquire() and not BuildLock(lock.path).acquire()  # exclusive
    result, logs, logged = {}, [], threading.Event()

    def log(line):
        logs.append(line)
        logged.set()

    def waiter():
        result["store"] = store_mod.open_or_build(
            src, tok, inputs, root, max_bytes=None, max_tokens=None, num_proc=1, log=log, poll_s=0.02
        )

    th = threading.Thread(target=waiter)
    th.start()
    assert logged.wait(30)  # the waiter found the lock held and said so (no sleep-then-read race)
    assert th.is_alive() and "waiting for" in logs[0]  # the holder is alive: nobody else builds
    store_mod._build(folder, src, tok, inputs, None, None, 1, 1 << 20)  # "the other rank" finishes
    lock.release()
    th.join(10)
    s, built = result["store"]
    assert not built and s.path == folder and s.n_docs == 8


@pytest.mark.slow
def test_two_processes_build_once_and_parallel_workers_match(tmp_path, bpe_path):
    """Two processes race for one store (one builds, the other waits and maps it); a 2-worker
    build writes byte-identical files to a 1-worker build."""
    import subprocess
    import sys

    _corpus(tmp_path / "txt", n=12)
    code = (
        "import sys, json; from compressmamba.data.text import prepare_store; "
        f"s, t, b = prepare_store(files={str(tmp_path / 'txt/*.txt')!r}, tokenizer={str(bpe_path)!r}, "
        f"cache_dir={str(tmp_path / 'race')!r}, num_proc=2); print(json.dumps([str(s.path), b]))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    out = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert out[0][0] == out[1][0] and sorted(o[1] for o in out) == [False, True]
    one, _, _ = prepare_store(
        files=str(tmp_path / "txt/*.txt"), tokenizer=str(bpe_path), cache_dir=tmp_path / "one", num_proc=1
    )
    race = store_mod.TokenStore(tmp_path / "race" / one.path.name, one.manifest)
    assert np.array_equal(_tokens(one), _tokens(race)) and np.array_equal(one.doc_ends, race.doc_ends)


def test_parallel_encoding_keeps_order_and_bounds_chunks_in_flight(tmp_path):
    pulled, done = [], []
    docs = [f"doc {i} ".encode() * (i + 1) for i in range(40)]

    def chunks():
        for i, d in enumerate(docs):
            pulled.append(i)
            yield [d], len(d)

    tok = Tokenizer("byte")
    for (ids, _lengths, _, _), _ in store_mod._encoded(chunks(), tok, np.dtype(np.uint16), 2):
        done.append(len(done))
        assert len(pulled) - len(done) <= 4  # at most 2 · num_proc chunks ahead of the writer
        assert bytes(ids[:-1].astype(np.uint8)) == docs[done[-1]]


# --- caps, splits, bad input ------------------------------------------------------------------------------
def test_max_tokens_caps_the_store_exactly(tmp_path):
    _corpus(tmp_path / "txt")
    kw = {"files": str(tmp_path / "txt/*.txt"), "cache_dir": tmp_path / "cache"}
    full, _, _ = prepare_store(**kw)
    ends = np.asarray(full.doc_ends)
    for cap in (int(ends[2]), int(ends[2]) + 100, int(ends[2]) + 1):
        s, _, _ = prepare_store(**kw, max_tokens=cap)
        t = _tokens(s)
        assert s.n_tokens == (cap if cap != ends[2] + 1 else ends[2])  # a lone separator is not a document
        assert np.array_equal(t[:-1], _tokens(full)[: s.n_tokens - 1]) and t[-1] == 0
        assert s.n_docs == (3 if cap <= ends[2] + 1 else 4) and s.doc_ends[-1] == s.n_tokens
    with pytest.raises(ValueError, match="max_tokens"):
        text_lm(**kw, max_tokens=1)


def test_max_bytes_keeps_whole_documents(tmp_path):
    docs = _corpus(tmp_path / "txt")
    kw = {"files": str(tmp_path / "txt/*.txt"), "cache_dir": tmp_path / "cache"}
    sizes = np.cumsum([len(d.encode()) for d in docs])
    s, _, _ = prepare_store(**kw, max_bytes=int(sizes[2]) + 1)  # crosses inside document 3: it is kept whole
    assert s.n_docs == 4 and s.n_tokens == sizes[3] + 4


def test_split_rule_blocks_are_seeded_and_exact():
    n = 3 * store_mod.SPLIT_BLOCK + 123
    a, b, c = split_documents(n, 0.01, 7), split_documents(n, 0.01, 7), split_documents(n, 0.01, 8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    blocks = [a[i : i + store_mod.SPLIT_BLOCK] for i in range(0, n, store_mod.SPLIT_BLOCK)]
    assert [int(x.sum()) for x in blocks] == [655, 655, 655, 1]  # round(f·m), at least one per block
    small = split_documents(37, 0.2, 3)  # one block: the first round(f·n) of a seeded permutation
    want = np.zeros(37, bool)
    want[np.random.default_rng(3).permutation(37)[:7]] = True
    assert np.array_equal(small, want)


def test_runs_match_a_loop_reference():
    rng = np.random.default_rng(0)
    for n in (1, 2, 17, 300):
        lengths = rng.integers(1, 9, size=n)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        keep = rng.random(n) < 0.6
        ref, v = [], 0
        for i in range(n):
            if keep[i] and ref and keep[i - 1] and i > 0:
                ref[-1][2] += lengths[i]
            elif keep[i]:
                ref.append([v, starts[i], lengths[i]])
            v += lengths[i] if keep[i] else 0
        got = _runs(starts, lengths, keep)
        assert got.tolist() == ref and got.dtype == np.int64


def test_sources_jsonl_json_csv_arrow_and_save_to_disk(tmp_path):
    import datasets
    import pyarrow as pa

    texts = [t[:800] for t in _stdlib_texts(6)]
    (tmp_path / "a.jsonl").write_text(
        "\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(texts[:2])) + "\n\n"
    )
    (tmp_path / "b.json").write_text(json.dumps([{"text": texts[2]}]))
    ds = datasets.Dataset.from_dict({"text": texts[3:5], "n": [1, 2]})
    ds.to_csv(str(tmp_path / "c.csv"), index=False)
    table = pa.table({"text": [texts[5]]})
    with pa.ipc.new_stream(str(tmp_path / "d.arrow"), table.schema) as w:
        w.write_table(table)
    files = [str(tmp_path / n) for n in ("a.jsonl", "b.json", "c.csv", "d.arrow")]
    s, _, _ = prepare_store(files=files, cache_dir=tmp_path / "cache")
    assert [bytes(d[:-1].astype(np.uint8)).decode() for d in _doc_list(s)] == texts
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "disk"))
    s2, _, _ = prepare_store(dataset=str(tmp_path / "disk"), cache_dir=tmp_path / "cache")
    assert np.array_equal(_tokens(s2), _tokens(s)) and s2.manifest["inputs"]["source"]["kind"] == "save_to_disk"
    datasets.DatasetDict({"train": ds, "validation": ds}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(ValueError, match="'test' is not in"):
        prepare_store(dataset=str(tmp_path / "dict"), split="test", cache_dir=tmp_path / "cache")
    s3, _, _ = prepare_store(dataset=str(tmp_path / "dict"), split="validation", cache_dir=tmp_path / "cache")
    assert s3.n_docs == 2


def test_hub_dataset_is_streamed(tmp_path, monkeypatch):
    import datasets

    texts = [t[:500] for t in _stdlib_texts(4)]
    calls = []

    def fake_load_dataset(name, config=None, split=None, revision=None, streaming=False):
        calls.append((name, config, split, revision, streaming))
        return datasets.IterableDataset.from_generator(lambda: ({"text": t, "meta": 0} for t in texts))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    kw = {"dataset": "org/corpus", "dataset_config": "en", "revision": "abc123", "cache_dir": tmp_path}
    s, _, built = prepare_store(**kw)
    assert built and calls == [("org/corpus", "en", "train", "abc123", True)]
    src = {"kind": "hub", "name": "org/corpus", "config": "en", "revision": "abc123", "split": "train"}
    assert s.manifest["inputs"]["source"] == {**src, "text_column": "text"}
    assert [bytes(d[:-1].astype(np.uint8)).decode() for d in _doc_list(s)] == texts
    prepare_store(**kw)
    assert len(calls) == 1  # reused without streaming again
    with pytest.raises(ValueError, match="row 0 has no 'body' column"):
        prepare_store(**kw, text_column="body")


def test_jsonl_without_the_text_column_names_file_and_line(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"text": "fine"}\n{"body": "no text here"}\n')
    with pytest.raises(ValueError, match=r"x\.jsonl line 2 has no 'text' field \(has \['body'\]\)"):
        prepare_store(files=str(tmp_path / "x.jsonl"), cache_dir=tmp_path)
    (tmp_path / "y.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(ValueError, match=r"y\.jsonl line 2 is not valid JSON"):
        prepare_store(files=str(tmp_path / "y.jsonl"), cache_dir=tmp_path)
    import datasets

    datasets.Dataset.from_dict({"body": ["a", "b"]}).to_parquet(str(tmp_path / "z.parquet"))
    with pytest.raises(ValueError, match=r"z\.parquet has no 'text' column \(has \['body'\]\)"):
        prepare_store(files=str(tmp_path / "z.parquet"), cache_dir=tmp_path)
    assert not list(tmp_path.glob("*-*"))  # failed builds leave nothing that looks finished


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path, bpe_path):
    (tmp_path / "a.txt").write_bytes(b"caf\xe9 na\xefve \xff\xfe ok \xef\xbf\xbd")  # 4 bad sequences, 1 real U+FFFD
    (tmp_path / "b.txt").write_text("plain text " * 10)
    s, _, _ = prepare_store(files=str(tmp_path / "*.txt"), cache_dir=tmp_path)
    assert s.manifest["counts"]["replaced_invalid_utf8"] == 4
    first = bytes(_doc_list(s)[0][:-1].astype(np.uint8)).decode("utf-8")  # the stored bytes are valid UTF-8
    assert first == "caf\ufffd na\ufffdve \ufffd\ufffd ok \ufffd"
    b, tok, _ = prepare_store(files=str(tmp_path / "*.txt"), tokenizer=str(bpe_path), cache_dir=tmp_path)
    assert b.manifest["counts"]["replaced_invalid_utf8"] == 4 and tok.decode(_doc_list(b)[0][:-1]) == first


def test_empty_files_are_counted_and_an_empty_corpus_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("some text " * 30)
    (tmp_path / "b.txt").write_text("")
    (tmp_path / "c.txt").write_text("more text " * 30)
    s, _, _ = prepare_store(files=str(tmp_path / "*.txt"), cache_dir=tmp_path / "c")
    assert s.manifest["counts"]["empty_documents"] == 1 and s.n_docs == 3 and _doc_list(s)[1].tolist() == [0]
    (tmp_path / "e").mkdir()
    (tmp_path / "e/x.txt").write_text("")
    (tmp_path / "e/y.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"hold no text .*x\.txt"):
        prepare_store(files=str(tmp_path / "e/*"), cache_dir=tmp_path / "c")


def test_cache_dir_default_env_and_recipe_key(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSMAMBA_CACHE", str(tmp_path / "env"))
    assert store_mod.default_cache_dir() == tmp_path / "env" / "tokens"
    monkeypatch.delenv("COMPRESSMAMBA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store_mod.default_cache_dir() == tmp_path / "xdg" / "compressmamba" / "tokens"
    (tmp_path / "a.txt").write_text("text " * 50)
    (tmp_path / "b.txt").write_text("more " * 50)
    d = text_lm(files=str(tmp_path / "*.txt"), seq_len=8, val_fraction=0.5, cache_dir=str(tmp_path / "mine"))
    assert d.info["store"].startswith(str(tmp_path / "mine"))  # data.cache_dir holds the stores itself
    assert not (tmp_path / "xdg").exists()


def test_packed_batches_depend_on_seed_and_step_and_ranks_are_disjoint(tmp_path):
    from compressmamba.training.data import StepBatches

    d = text_lm(corpus="python_stdlib", max_bytes=300_000, seq_len=32, cache_dir=tmp_path)
    r0, r1 = StepBatches(d.train, 4, 3, 0, 2), StepBatches(d.train, 4, 3, 1, 2)
    again = StepBatches(d.train, 4, 3, 0, 2)
    for step in (0, 5, r0.steps_per_epoch + 2):
        assert not set(r0.indices(step)) & set(r1.indices(step))
        b, c = r0.batch(step), again.batch(step)
        assert b["input_ids"].shape == (4, 33) and (b["input_ids"] == c["input_ids"]).all()
    resumed = list(again.stream(5, 7))  # a resumed run sees the batches it would have seen
    assert all((x["input_ids"] == r0.batch(s)["input_ids"]).all() for x, s in zip(resumed, (5, 6)))
    assert os.path.getsize(os.path.join(d.info["store"], "tokens.bin")) == 2 * d.info["manifest"]["counts"]["tokens"]


def test_feistel_permutation_is_a_bijection_without_materialising():
    from compressmamba.training.data import feistel_permute

    for n in (1, 2, 3, 97, 1000, 4097, (1 << 16) + 3):
        p = feistel_permute(np.arange(n), n, key=12345)
        assert np.array_equal(np.sort(p), np.arange(n)), n
        assert np.array_equal(feistel_permute(np.arange(n), n, key=12345), p)  # deterministic
        if n > 3:
            q = feistel_permute(np.arange(n), n, key=12346)
            assert not np.array_equal(p, q) and not np.array_equal(p, np.arange(n))
    with pytest.raises(IndexError):
        feistel_permute(np.array([5]), 5, key=0)


def test_step_batches_of_a_huge_dataset_draw_rows_lazily(monkeypatch):
    """Above MATERIALISE_MAX rows StepBatches indexes a keyed bijection: one epoch visits every
    row once, ranks are disjoint, and a batch depends only on (seed, step)."""
    from compressmamba.training import data as tdata

    monkeypatch.setattr(tdata, "MATERIALISE_MAX", 0)
    ds = list(range(1003))
    r = [tdata.StepBatches(ds, 5, 9, rank, 2, micro=2) for rank in (0, 1)]
    seen = [i for step in range(r[0].steps_per_epoch) for b in r for m in (0, 1) for i in b.indices(step, m)]
    assert len(seen) == len(set(seen)) == r[0].steps_per_epoch * 20
    assert r[0]._perm is None  # nothing n-long was built
    fresh = tdata.StepBatches(ds, 5, 9, 0, 2, micro=2)
    assert fresh.indices(7, 1) == r[0].indices(7, 1) and fresh.indices(7, 1) != r[0].indices(7 + 50, 1)


def damage(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_a_store_damaged_in_place_is_rebuilt_on_open_or_refused_on_read(tmp_path, monkeypatch):
    """Defect: tokens.bin overwritten at the same size trained silently on garbage (in-vocabulary
    values) or ended in an IndexError in the embedding. Every open checks sampled blocks (all,
    here) and rebuilds; a reader checks each block it reads and refuses damage done after open."""
    monkeypatch.setattr(store_mod, "BLOCK_BYTES", 4096)
    _corpus(tmp_path / "c", n=8)
    kw = dict(files=str(tmp_path / "c" / "*.txt"), seq_len=32, cache_dir=str(tmp_path / "cache"))
    data = text_lm(**kw)
    tok_file = data.train.tokens_path
    want = tok_file.read_bytes()
    assert len(data.info["manifest"]["checksums"]["tokens.bin"]) == -(-len(want) // 4096) > 2
    damage(tok_file, len(want) // 2, b"aaaa")  # in the vocabulary: only the checksum sees it
    logs = []
    monkeypatch.setattr("sys.stderr", type("W", (), {"write": lambda s, x: logs.append(x), "flush": lambda s: 0})())
    again = text_lm(**kw)
    assert again.info["store_built"] and any("fails its checksum" in x for x in logs)
    assert tok_file.read_bytes() == want
    # damaged after it was opened: the first read of the block refuses, naming the file
    rows = again.train
    damage(tok_file, len(want) - 64, b"\x00\x01" * 8)
    with pytest.raises(ValueError) as e:
        for i in range(len(rows)):
            rows[i]
    assert str(tok_file) in str(e.value) and "fails its checksum" in str(e.value) and "\n" not in str(e.value)


def test_token_ids_outside_the_vocabulary_never_reach_the_embedding(tmp_path):
    from compressmamba.data.text import PackedRows

    toks = np.arange(100, dtype=np.uint16) % 50
    toks[70] = 300
    (tmp_path / "tokens.bin").write_bytes(toks.tobytes())
    runs = np.array([[0, 0, 100]], dtype=np.int64)
    rows = PackedRows(tmp_path / "tokens.bin", np.uint16, 100, runs, 16, "train", vocab_size=256)
    rows[0]
    with pytest.raises(ValueError, match=r"token id 300 at stream position 70 is outside the vocabulary of 256"):
        rows[4]
