import json

import numpy as np
import pytest
import torch

from compressmamba.data.text import python_stdlib_files, text_lm


def test_stdlib_corpus_is_real_and_deterministic():
    files = python_stdlib_files()
    assert len(files) > 100 and all(f.suffix == ".py" for f in files)
    a = text_lm(corpus="python_stdlib", max_bytes=200_000, seq_len=32, seed=1)
    b = text_lm(corpus="python_stdlib", max_bytes=200_000, seq_len=32, seed=1)
    assert torch.equal(a.train.data, b.train.data) and a.info["vocab_size"] == 256 and a.info["task"] == "lm"
    item = a.train[3]
    assert item["input_ids"].shape == (33,) and torch.equal(item["input_ids"], item["labels"])
    # consecutive rows continue the same stream (packed): row i ends where row i+1 starts
    assert a.train[0]["input_ids"][-1] == a.train[1]["input_ids"][0]
    text = bytes(a.train.data[:2000].tolist()).decode("utf-8", errors="replace")
    assert "def " in text or "import " in text


def test_local_txt_and_jsonl_files_split_by_document(tmp_path):
    for i in range(6):
        (tmp_path / f"doc{i}.txt").write_text(f"document number {i} " * 20)
    d = text_lm(files=str(tmp_path / "*.txt"), seq_len=16, val_fraction=0.34, seed=0)
    assert len(d.val) > 0 and len(d.train) > len(d.val)
    val_text = bytes(d.val.data.tolist()).decode()
    train_text = bytes(d.train.data.tolist()).decode()
    val_ids = {w for w in val_text.split() if w.isdigit()}
    train_ids = {w for w in train_text.split() if w.isdigit()}
    assert val_ids and not (val_ids & train_ids)  # no document in both splits
    jl = tmp_path / "data.jsonl"
    jl.write_text("\n".join(json.dumps({"text": f"line {i} " * 30}) for i in range(5)))
    d2 = text_lm(files=[str(jl)], seq_len=8, val_fraction=0.2)
    assert len(d2.train) > 0


def test_local_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "[UNK]": 1, "hello": 2, "world": 3, "foo": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    for i in range(3):
        (tmp_path / f"d{i}.txt").write_text("hello world foo bar " * 10)
    d = text_lm(files=str(tmp_path / "*.txt"), tokenizer=str(tmp_path / "tokenizer.json"), seq_len=4, val_fraction=0.34)
    assert d.info["vocab_size"] == 5
    assert set(d.train.data.tolist()) <= {0, 1, 2, 3, 4}


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing matches"):
        text_lm(files=str(tmp_path / "missing*.txt"))
    with pytest.raises(ValueError, match="corpus"):
        text_lm(corpus="wikipedia")
    (tmp_path / "a.txt").write_text("tiny")
    (tmp_path / "b.txt").write_text("tiny")
    with pytest.raises(ValueError, match="fewer than one sequence"):
        text_lm(files=str(tmp_path / "*.txt"), seq_len=64)


def test_byte_stream_is_the_documents_in_order_with_separators(tmp_path):
    rng = np.random.default_rng(7)
    docs = []
    for i in range(9):
        text = "".join(rng.choice(list("abc xyz_é\n")) for _ in range(int(rng.integers(40, 90))))
        (tmp_path / f"d{i}.txt").write_text(text, encoding="utf-8")
        docs.append(text.encode())
    d = text_lm(files=str(tmp_path / "*.txt"), seq_len=13, val_fraction=0.3, seed=4)
    val_bytes, got = bytes(d.val.data.tolist()), bytes(d.train.data.tolist())
    in_val = [x[:12] in val_bytes for x in docs]  # the val stream may end inside its last document
    assert sum(in_val) == 3 and not any(x[:12] in got for x, v in zip(docs, in_val) if v)
    # train stream = its documents in file order, each followed by the 0x00 separator, cut to whole rows
    want = b"".join(x + b"\0" for x, v in zip(docs, in_val) if not v)
    assert want.startswith(got) and len(want) - len(got) < 13 and len(got) == 13 * len(d.train) + 1
    for i in (0, len(d.train) - 1):
        item = d.train[i]
        assert item["input_ids"].dtype == torch.long and item["input_ids"].shape == (14,)
        assert bytes(item["input_ids"].tolist()) == got[13 * i : 13 * i + 14]
    with pytest.raises(IndexError):
        d.train[len(d.train)]
    other = text_lm(files=str(tmp_path / "*.txt"), seq_len=13, val_fraction=0.3, seed=5)
    same = text_lm(files=str(tmp_path / "*.txt"), seq_len=13, val_fraction=0.3, seed=4)
    assert torch.equal(same.val.data, d.val.data) and not torch.equal(other.val.data, d.val.data)


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
    d = text_lm(files=[str(tmp_path / "c.parquet")], tokenizer=str(tmp_path), seq_len=7, val_fraction=0.34, seed=1)
    assert d.info["vocab_size"] == 42 and d.info["tokenizer"].eos == 0
    streams = [np.array(tok.encode(t).ids + [0]) for t in texts]
    val = d.val.data.numpy()
    hits = [k for k, s in enumerate(streams) if len(s) <= len(val) and np.array_equal(val[: len(s)], s)]
    assert hits and 1 in set(np.concatenate(streams))  # the stream starts with a val document; [UNK] appears


def test_stdlib_files_skip_tests_and_site_packages():
    files = python_stdlib_files()
    parts = {p for f in files for p in f.parts}
    assert not parts & {"site-packages", "dist-packages", "test", "tests", "idlelib"}
    assert (
        any(f.name == "os.py" for f in files) and files == sorted(files, key=lambda f: (str(f.parent), f.name)) or files
    )


def test_bad_arguments_name_the_argument(tmp_path):
    (tmp_path / "a.txt").write_text("some text " * 20)
    (tmp_path / "b.txt").write_text("more text " * 20)
    for kw, name in (
        ({"seq_len": 0}, "seq_len"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"max_bytes": -5}, "max_bytes"),
    ):
        with pytest.raises(ValueError, match=name):
            text_lm(files=str(tmp_path / "*.txt"), **kw)
    with pytest.raises(FileNotFoundError, match="expected a tokenizer file"):
        text_lm(files=str(tmp_path / "*.txt"), tokenizer=str(tmp_path / "missing.json"))
