import json
import random
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from compressmamba.data import listops_gen as lg
from compressmamba.data.lra import aan, imdb, listops, listops_tokens, pathfinder, pathx
from compressmamba.registry import build_data

# ----------------------------------------------------------------------------- independent references


def _eval_listops(source: str) -> tuple[int, int, list[int]]:
    """Evaluate a printed tree with a token stack (no use of the generator's code).
    Returns (value, length in op/value/] tokens, argument counts of every operator)."""
    ops = {"[MIN": min, "[MAX": max, "[MED": lambda a: int(np.median(a)), "[SM": lambda a: sum(a) % 10}
    stack, length, arities = [], 0, []
    for tok in source.split():
        if tok in ("(", ")"):
            continue
        length += 1
        if tok in ops:
            stack.append([tok])
        elif tok == "]":
            frame = stack.pop()
            arities.append(len(frame) - 1)
            value = ops[frame[0]](frame[1:])
            if stack:
                stack[-1].append(value)
            else:
                return value, length, arities
        else:
            if stack:
                stack[-1].append(int(tok))
            else:
                return int(tok), length, arities
    raise AssertionError(f"unbalanced tree: {source[:80]}")


def _torchtext_vocab(token_lists, min_freq=1):
    counts = Counter(t for toks in token_lists for t in toks)
    ordered = sorted(counts.items(), key=lambda kv: kv[0])
    ordered.sort(key=lambda kv: kv[1], reverse=True)  # stable: ties stay in ascending token order
    return ["<pad>", "<unk>", "<eos>"] + [t for t, c in ordered if c >= min_freq]


def _check_item(item, want_ids, l_max):
    n = min(len(want_ids), l_max - 1)
    x = item["inputs"]
    assert x.shape == (l_max,) and x.dtype == torch.long and item["lengths"] == n + 1
    assert x[:n].tolist() == want_ids[:n] and x[n] == 2 and (x[n + 1 :] == 0).all()


def test_chunked_encoding_matches_a_per_character_loop():
    from compressmamba.data.lra import _codepoints, _count, _encode, build_vocab

    rng = random.Random(9)
    # some chunks Latin-1 (uint8 code points), some not (uint32); an empty document; chunk edges
    docs = [
        "".join(rng.choice("abcé λ€" if k % 4 == 1 else "abcé ") for _ in range(rng.randint(0, 20))) for k in range(11)
    ]
    docs[5] = ""
    chunks = _codepoints(docs, 12, chunk=3)
    assert {c.dtype for c, _ in chunks} == {np.dtype(np.uint8), np.dtype(np.uint32)}
    vocab = build_vocab(_count(chunks, chr), min_freq=2)
    assert vocab == _torchtext_vocab([list(d[:11]) for d in docs], min_freq=2)
    flat, offsets = _encode(chunks, vocab, ord)
    ids = {t: i for i, t in enumerate(vocab)}
    for k, d in enumerate(docs):
        assert flat[offsets[k] : offsets[k + 1]].tolist() == [ids.get(ch, 1) for ch in d[:11]] + [2]


# ----------------------------------------------------------------------------- ListOps generator


def test_generator_prints_lra_format_and_evaluates_correctly():
    assert lg.tree_to_string(("[MAX", [2, 9])) == "( ( ( [MAX 2 ) 9 ) ] )"
    assert _eval_listops("( ( ( [MAX 2 ) 9 ) ] )") == (9, 4, [2])
    for args in ([3, 1], [4, 1, 7, 2], [5, 5, 0], [9, 8, 1, 0, 6, 3]):
        assert lg.apply_op("[MED", args) == int(np.median(args))
        assert lg.apply_op("[SM", args) == sum(args) % 10
    rows = lg.generate_listops(300, min_length=30, max_length=120, max_depth=6, max_args=5, seed=11)
    assert len({s for s, _ in rows}) == 300
    for src, target in rows:
        value, length, arities = _eval_listops(src)
        assert value == target and 30 < length < 120
        assert all(2 <= a <= 5 for a in arities)
    assert lg.generate_listops(50, 30, 120, 6, 5, seed=11) == rows[:50]
    assert lg.generate_listops(50, 30, 120, 6, 5, seed=12) != rows[:50]


def test_generator_leaf_probability_and_depth_cap():
    rng = random.Random(5)
    leaves = sum(isinstance(lg.generate_tree(rng, 1, 10, 10)[0], int) for _ in range(4000))
    assert abs(leaves / 4000 - (1 - lg.VALUE_P)) < 0.03
    assert all(isinstance(lg.generate_tree(rng, 4, 4, 10)[0], int) for _ in range(50))
    with pytest.raises(ValueError, match="min_length"):
        lg.generate_listops(5, min_length=100, max_length=50)
    with pytest.raises(ValueError, match="widen the length limits"):
        lg.generate_listops(5, min_length=3000, max_length=4000, max_depth=3, max_tries=200)


# ----------------------------------------------------------------------------- ListOps loader


def test_listops_tsv_tokens_vocab_and_padding(tmp_path):
    paths = lg.write_listops_release(
        tmp_path, n_train=60, n_val=7, n_test=9, seed=2, min_length=10, max_length=90, max_depth=5
    )
    assert paths["train"].read_text().startswith("Source\tTarget\n")
    d = build_data({"name": "listops", "path": str(tmp_path), "l_max": 64}, seed=0)
    assert (len(d.train), len(d.val), len(d.test)) == (60, 7, 9)
    lines = [ln.split("\t") for ln in paths["train"].read_text().splitlines()[1:]]
    vocab = _torchtext_vocab([listops_tokens(s)[:63] for s, _ in lines])  # counted after the cut to l_max - 1
    assert d.info["vocab"][: len(vocab)] == vocab and d.info["vocab_size"] == 18 == len(set(d.info["vocab"]))
    assert d.info["seq_len"] == 64 and d.info["n_classes"] == 10 and not d.info["pair"]
    ids = {t: i for i, t in enumerate(d.info["vocab"])}
    for i in (0, 17, 59):
        src, tgt = lines[i]
        _check_item(d.train[i], [ids[t] for t in listops_tokens(src)], 64)
        assert d.train[i]["labels"] == int(tgt)
    batch = default_collate([d.val[i] for i in range(4)])
    assert batch["inputs"].shape == (4, 64) and batch["labels"].shape == (4,)


def test_listops_unusual_tokens_take_the_slow_path(tmp_path):
    rows = [
        ("( ( ( [MAX 12 ) 9 ) ] )", 9),
        ("( ( [MIN] 3 ) ] )", 3),
        ("( ( ( [MIN 3 ) 7 ) ] )", 3),
        ("( ( [SM 4 ) ] )", 4),
    ]
    for split in ("train", "val", "test"):
        lg.write_tsv(tmp_path / f"basic_{split}.tsv", rows)
    d = listops(path=tmp_path, l_max=16)
    ids = {t: i for i, t in enumerate(d.info["vocab"])}
    assert "12" in ids and d.info["vocab"][:3] == ["<pad>", "<unk>", "<eos>"]
    for i, (src, _) in enumerate(rows):
        _check_item(d.test[i], [ids[t] for t in listops_tokens(src)], 16)


def test_listops_generate_option(tmp_path):
    gen = {"n_train": 40, "n_val": 5, "n_test": 5, "min_length": 10, "max_length": 60, "max_depth": 5, "seed": 1}
    mem = listops(generate=gen, l_max=64)
    disk = listops(path=tmp_path / "lo", generate=gen, l_max=64)
    assert json.loads((tmp_path / "lo" / "generate.json").read_text()) == gen
    stamp = (tmp_path / "lo" / "basic_train.tsv").stat().st_mtime_ns
    again = listops(path=tmp_path / "lo", generate=gen, l_max=64)
    assert (tmp_path / "lo" / "basic_train.tsv").stat().st_mtime_ns == stamp
    for a, b in ((mem, disk), (disk, again)):
        assert torch.equal(a.train[3]["inputs"], b.train[3]["inputs"]) and a.test[4]["labels"] == b.test[4]["labels"]
    assert len(listops(generate=gen, l_max=64, limit_train=10).train) == 10
    (tmp_path / "lo" / "generate.json").unlink()  # now they look like someone else's files: never overwritten
    with pytest.raises(ValueError, match="did not write"):
        listops(path=tmp_path / "lo", generate=gen)


def test_listops_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="basic_train.tsv"):
        listops(path=tmp_path)
    (tmp_path / "basic_train.tsv").write_text("text\tlabel\nfoo\t1\n")
    with pytest.raises(ValueError, match="Source"):
        listops(path=tmp_path)
    with pytest.raises(ValueError, match="l_max"):
        listops(path=tmp_path, l_max=1)
    with pytest.raises(ValueError, match="unknown keys \\['depth'\\]"):
        listops(generate={"n_train": 5, "depth": 3})


# ----------------------------------------------------------------------------- IMDB


def _review(rng, n):
    return "".join(rng.choice(list("abcdefgh éxyz!.")) for _ in range(n))


def _write_aclimdb(root, n=6, seed=0):
    rng = random.Random(seed)
    texts = {}
    for split in ("train", "test"):
        for cls, rating in (("pos", 8), ("neg", 2)):
            folder = root / "aclImdb" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                t = _review(rng, rng.randint(5, 60))
                (folder / f"{i}_{rating}.txt").write_text(t, encoding="utf-8")
                texts[(split, cls, i)] = t
    return texts


def test_imdb_aclimdb_folder_vocab_and_splits(tmp_path):
    texts = _write_aclimdb(tmp_path, n=10)
    l_max = 40
    d = imdb(path=tmp_path, l_max=l_max, min_freq=3, seed=1)
    train_texts = [texts[("train", c, i)][: l_max - 1] for c in ("neg", "pos") for i in range(10)]
    vocab = _torchtext_vocab([list(t) for t in train_texts], min_freq=3)
    assert d.info["vocab"] == vocab and d.info["vocab_size"] == len(vocab) and d.info["n_classes"] == 2
    assert (len(d.train), len(d.val), len(d.test)) == (18, 2, 20)
    assert not set(d.train.index) & set(d.val.index)
    ids = {t: i for i, t in enumerate(vocab)}
    # test items: neg files first (label 0), then pos (label 1), each sorted by name
    for k, (cls, i) in enumerate([("neg", 0), ("neg", 9), ("pos", 3)]):
        item = d.test[[0, 9, 13][k]]
        _check_item(item, [ids.get(ch, 1) for ch in texts[("test", cls, i)]], l_max)
        assert item["labels"] == (cls == "pos")
    assert np.array_equal(imdb(path=tmp_path, l_max=l_max, seed=1).val.index, d.val.index)
    assert not np.array_equal(imdb(path=tmp_path, l_max=l_max, seed=2).val.index, d.val.index)
    paper = imdb(path=tmp_path / "aclImdb", l_max=l_max, val_split="test")
    assert paper.val is paper.test and len(paper.train) == 20


def test_imdb_from_local_csv_and_json(tmp_path):
    import datasets

    rng = random.Random(3)
    rows = {s: [{"text": _review(rng, 30), "label": i % 2} for i in range(10)] for s in ("train", "test")}
    for s, r in rows.items():
        datasets.Dataset.from_list(r).to_csv(str(tmp_path / f"{s}.csv"), index=False)
        (tmp_path / "j").mkdir(exist_ok=True)
        (tmp_path / "j" / f"{s}.jsonl").write_text("\n".join(json.dumps(x) for x in r))
    a = imdb(path=tmp_path, min_freq=1, l_max=64)
    b = imdb(path=tmp_path / "j", min_freq=1, l_max=64)
    assert a.info["vocab"] == b.info["vocab"]
    ids = {t: i for i, t in enumerate(a.info["vocab"])}
    for d in (a, b):
        _check_item(d.test[6], [ids[c] for c in rows["test"][6]["text"]], 64)
        assert d.test[6]["labels"] == 0 and d.test[7]["labels"] == 1


def test_imdb_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="aclImdb/train"):
        imdb(path=tmp_path)
    (tmp_path / "train.csv").write_text("text,label\nhi,1\n")
    with pytest.raises(FileNotFoundError, match="test.csv"):
        imdb(path=tmp_path)
    with pytest.raises(ValueError, match="val_split"):
        imdb(path=tmp_path, val_split="dev")


# ----------------------------------------------------------------------------- AAN


def test_aan_pairs(tmp_path):
    rng = random.Random(4)
    folder = tmp_path / "tsv_data"
    folder.mkdir()
    data = {}
    for split in ("train", "eval", "test"):
        rows = [(f"{i % 2}.0", f"id{i}", f"id{i + 1}", _review(rng, 40), _review(rng, 25)) for i in range(8)]
        (folder / f"new_aan_pairs.{split}.tsv").write_text("\n".join("\t".join(r) for r in rows) + "\n")
        data[split] = rows
    d = build_data({"name": "aan", "path": str(tmp_path), "l_max": 32})
    assert d.info["pair"] and d.info["n_classes"] == 2 and len(d.val) == 8
    tokens = [list(r[3][:31]) for r in data["train"]] + [list(r[4][:31]) for r in data["train"]]
    assert d.info["vocab"] == _torchtext_vocab(tokens)
    ids = {t: i for i, t in enumerate(d.info["vocab"])}
    item = d.val[5]
    _check_item(item, [ids.get(c, 1) for c in data["eval"][5][3]], 32)
    _check_item(
        {"inputs": item["inputs2"], "lengths": item["lengths2"]}, [ids.get(c, 1) for c in data["eval"][5][4]], 32
    )
    assert item["labels"] == 1
    batch = default_collate([d.train[i] for i in range(3)])
    assert batch["inputs2"].shape == (3, 32) and batch["lengths2"].shape == (3,)
    (folder / "new_aan_pairs.eval.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="new_aan_pairs.eval.tsv"):
        aan(path=tmp_path)


# ----------------------------------------------------------------------------- Pathfinder / Path-X


def _write_pathfinder(root, res, difficulty, n, seed=0, empty=None):
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = root / f"pathfinder{res}" / difficulty
    (base / "metadata").mkdir(parents=True)
    images, labels, lines = [], [], []
    for i in range(n):
        folder = base / "imgs" / str(i // 7)
        folder.mkdir(parents=True, exist_ok=True)
        img = rng.integers(0, 256, size=(res, res), dtype=np.uint8)
        label = int(rng.integers(0, 2))
        if i == empty:
            (folder / f"sample_{i}.png").write_bytes(b"")
        else:
            Image.fromarray(img).save(folder / f"sample_{i}.png")
            images.append(img.reshape(-1))
            labels.append(label)
        lines.append((i // 7, f"imgs/{i // 7} sample_{i}.png 0 {label} 1.0 6 2 2 0.5 1 1"))
    for k in sorted({g for g, _ in lines}):
        (base / "metadata" / f"{k}.npy").write_text("\n".join(ln for g, ln in lines if g == k) + "\n")
    return np.stack(images), np.array(labels)


def test_pathfinder_layout_normalisation_split_and_cache(tmp_path):
    x, y = _write_pathfinder(tmp_path, 32, "curv_contour_length_14", 30, seed=1)
    _write_pathfinder(tmp_path, 32, "curv_baseline", 20, seed=2, empty=172 % 20)
    cache = tmp_path / "cache"
    d = build_data({"name": "pathfinder", "path": str(tmp_path), "cache_dir": str(cache), "split_seed": 5}, seed=1)
    assert (len(d.train), len(d.val), len(d.test)) == (24, 3, 3)
    assert d.info == {"task": "classification", "d_input": 1, "n_classes": 2, "seq_len": 1024, "pair": False}
    got = {}
    for ds in (d.train, d.val, d.test):
        for i in range(len(ds)):
            item = ds[i]
            assert item["inputs"].shape == (1024, 1) and item["inputs"].dtype == torch.float32
            got[int(ds.index[i])] = item
    assert sorted(got) == list(range(30))  # the three splits partition the images
    for j in (0, 13, 29):
        np.testing.assert_allclose(got[j]["inputs"][:, 0].numpy(), (x[j] / 255 - 0.5) / 0.5, atol=1e-6)
        assert got[j]["labels"] == y[j]
    cached = pathfinder(path=tmp_path / "pathfinder32", cache_dir=cache, split_seed=5, seed=2, normalization="unit")
    assert np.array_equal(cached.test.index, d.test.index)  # the run seed does not move the split
    assert not np.array_equal(pathfinder(path=tmp_path, cache_dir=cache).test.index, d.test.index)
    assert isinstance(cached.train.pixels.base, np.memmap) or isinstance(cached.train.pixels, np.memmap)
    np.testing.assert_allclose(cached.test[1]["inputs"][:, 0].numpy(), x[d.test.index[1]] / 255, atol=1e-6)
    easy = pathfinder(path=tmp_path, difficulty="curv_baseline", cache=False)
    assert len(easy.train) + len(easy.val) + len(easy.test) == 19  # the empty file is skipped


def test_pathx_and_errors(tmp_path):
    _write_pathfinder(tmp_path, 128, "curv_contour_length_14", 10)
    d = pathx(path=tmp_path, cache=False)
    assert d.info["seq_len"] == 16384 and d.train[0]["inputs"].shape == (16384, 1)
    with pytest.raises(FileNotFoundError, match="curv_contour_length_14/metadata"):
        pathfinder(path=tmp_path, cache=False)  # no 32-px folder
    with pytest.raises(ValueError, match="difficulty"):
        pathfinder(path=tmp_path, difficulty="hard")
    next((tmp_path / "pathfinder128" / "curv_contour_length_14" / "imgs" / "1").glob("*.png")).unlink()
    with pytest.raises(FileNotFoundError, match="listed in .*metadata"):
        pathx(path=tmp_path, cache=False)
