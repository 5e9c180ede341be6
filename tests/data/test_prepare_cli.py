from compressmamba.cli import main


def _recipe(tmp_path, data: str) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(
        "name: t/prep\nseed: 3\nmodel: {name: mamba, d_model: 8, n_layers: 1, state_size: 4}\n"
        f"data: {data}\noptim: {{lr: 0.001}}\ntrain: {{steps: 1, batch_size: 2}}\nreduction: {{mode: none}}\n"
    )
    return str(path)


def test_prepare_data_builds_then_reuses(tmp_path, capsys):
    for i in range(5):
        (tmp_path / f"d{i}.txt").write_text(f"document {i} " * 40)
    cache = tmp_path / "cache"
    recipe = _recipe(tmp_path, f"{{name: text_lm, files: '{tmp_path}/*.txt', seq_len: 16, cache_dir: '{cache}'}}")
    assert main(["prepare-data", recipe]) == 0
    out = capsys.readouterr().out
    store = next(cache.iterdir())
    assert out.startswith(f"built token store {store} in ") and "documents 5 (train 4, validation 1)" in out
    assert "tokens 2,205 (train 1,764, validation 441), uint16" in out and "bytes: source" in out and "MB/s" in out
    assert main(["prepare-data", recipe, "data.seq_len=8"]) == 0  # another seq_len: the same store
    again = capsys.readouterr().out
    assert again.startswith(f"reused token store {store} in ") and "rows of 8 + 1 tokens" in again
    assert main(["prepare-data", recipe, "data.max_tokens=500"]) == 0
    assert capsys.readouterr().out.startswith("built token store") and len(list(cache.iterdir())) == 2


def test_prepare_data_refuses_other_data_and_unknown_keys(tmp_path, capsys):
    assert main(["prepare-data", _recipe(tmp_path, "{name: smnist}")]) == 2
    assert "builds token stores for text_lm data" in capsys.readouterr().err
    assert main(["prepare-data", _recipe(tmp_path, "{name: text_lm, corpus: python_stdlib, seqlen: 8}")]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) ['seqlen'] in recipe section 'data'" in err and "seq_len" in err
