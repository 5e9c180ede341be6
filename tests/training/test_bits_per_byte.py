"""Bits per byte beside perplexity: the trainer's number equals the summed loss (float64, the
model run directly) over ln 2 times the bytes the target tokens decode to, for the byte tokenizer
and a byte-level BPE; and it reaches metrics.jsonl and summary.json."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from compressmamba.data.tokenize import Tokenizer
from compressmamba.training import Trainer, recipe_from_dict
from compressmamba.training.metrics import read_metrics

TEXT = [
    "the quick brown fox jumps over the lazy dog. " * 20,
    "def add(a, b):\n    return a + b\n\n" * 15,
    "pack my box with five dozen liquor jugs; " * 20,
    "sphinx of black quartz, judge my vow. " * 20,
]


def _recipe(tmp_path, data):
    return {
        "name": "bpb",
        "seed": 0,
        "out_dir": str(tmp_path / "run"),
        "model": {"name": "mamba", "d_model": 16, "n_layers": 2, "state_size": [6, 4]},
        "data": {"name": "text_lm", "seq_len": 32, "val_fraction": 0.5, "cache_dir": str(tmp_path / "cache"), **data},
        "optim": {"lr": 3e-3},
        "train": {"steps": 2, "batch_size": 4, "eval_every": 2, "eval_batches": 2, "progress": False},
        "reduction": {"mode": "none"},
    }


def _corpus(tmp_path):
    for i, t in enumerate(TEXT):
        (tmp_path / f"doc{i}.txt").write_text(t)
    return str(tmp_path / "doc*.txt")


def _direct(tr, n_bytes):
    """Summed loss in nats over the whole validation split, float64, and its bits per byte."""
    model = copy.deepcopy(tr.model).double().eval()
    nll, nbytes = 0.0, 0
    with torch.no_grad():
        for i in range(len(tr.data.val)):
            ids = tr.data.val[i]["input_ids"][None]
            logits = model(input_ids=ids).logits[0, :-1].double()
            nll += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            nbytes += n_bytes(ids[0, 1:].tolist())
    return nll / nbytes / math.log(2)


def test_byte_tokenizer_bits_per_byte(tmp_path):
    tr = Trainer(recipe_from_dict(_recipe(tmp_path, {"files": _corpus(tmp_path)})))
    summary = tr.fit()
    val = tr.evaluate("val", whole=True)
    assert val["bits_per_byte"] == pytest.approx(_direct(tr, len), rel=1e-5)  # one byte per token
    assert val["bits_per_byte"] == pytest.approx(val["loss"] / math.log(2), rel=1e-12)
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "eval"]
    assert rows and all(r["bits_per_byte"] == pytest.approx(r["loss"] / math.log(2)) for r in rows)
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["val_bits_per_byte"] == summary["val_bits_per_byte"] == rows[-1]["bits_per_byte"]


@pytest.fixture
def bpe_file(tmp_path):
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TEXT, trainer)
    tok.add_tokens(["  "])  # an added, non-special token (as GPT-NeoX's runs of spaces): its own text
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def test_bpe_token_bytes_add_up_to_the_text(bpe_file):
    tok = Tokenizer(str(bpe_file))
    table = tok.token_bytes()
    assert table[tok.eos] == 1  # the document separator counts one byte, as 0x00 does
    for text in ["the lazy dog", "naïve 🙂 ünïcode, ok", "a  b   c\n\tz", *TEXT]:
        ids = tok.encode(text)
        assert int(table[ids].sum()) == len(text.encode())
    assert (Tokenizer("byte").token_bytes() == 1).all()


def test_bpe_bits_per_byte_equals_decoded_bytes(tmp_path, bpe_file):
    tr = Trainer(recipe_from_dict(_recipe(tmp_path, {"files": _corpus(tmp_path), "tokenizer": str(bpe_file)})))
    tr.fit()
    tok = tr.data.info["tokenizer"]

    def decoded_bytes(ids):  # the corpus is ASCII: every row's targets decode whole
        text = bytes(b for i in ids if i != tok.eos for b in tok.decode([i]).encode())
        return len(text) + ids.count(tok.eos)

    val = tr.evaluate("val", whole=True)
    assert val["bits_per_byte"] == pytest.approx(_direct(tr, decoded_bytes), rel=1e-5)
    assert val["bits_per_byte"] < val["loss"] / math.log(2)  # more than one byte per token
