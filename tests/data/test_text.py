import json

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
