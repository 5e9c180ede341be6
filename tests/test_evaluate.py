"""`compressmamba evaluate` and the `compressmamba` lm-eval model type, offline: three tiny local
tasks (multiple choice, generation, rolling log-likelihood) over JSONL files written here, a tiny
per-layer-N byte-level Mamba, and every score checked against the same log-likelihoods computed
directly with the model in float64."""

import json
import math

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is an optional extra: pip install -e '.[eval]'")

from compressmamba import evaluate as ev  # noqa: E402
from compressmamba.models import build_mamba  # noqa: E402

CHOICE = [
    {"question": "The cat sat on the", "choices": ["mat", "dog", "sky"], "answer": 0},
    {"question": "One, two,", "choices": ["three", "four"], "answer": 1},
    {"question": "Ā ünïcode ->", "choices": ["ok", "🙂"], "answer": 1},
]
GEN = [{"prompt": "abc", "target": "d"}, {"prompt": "hello world", "target": "x"}, {"prompt": "q", "target": ""}]
DOCS = [{"text": "def f(x):\n    return x + 1\n"}, {"text": "Bits per byte ünd so weiter."}]


def _yaml(name, data, body):
    return (
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        f"  cache_dir: {data.parent / 'hf_cache'}\ntest_split: test\n" + body
    )


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    for name, rows in (("choice", CHOICE), ("gen", GEN), ("docs", DOCS)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "tiny_choice.yaml").write_text(
        _yaml("tiny_choice", d / "choice.jsonl", "output_type: multiple_choice\n")
        + 'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    (d / "tiny_gen.yaml").write_text(
        _yaml("tiny_gen", d / "gen.jsonl", "output_type: generate_until\n")
        + 'doc_to_text: "{{prompt}}"\ndoc_to_target: "{{target}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 6\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n"
    )
    (d / "tiny_docs.yaml").write_text(
        _yaml("tiny_docs", d / "docs.jsonl", "output_type: loglikelihood_rolling\n")
        + 'doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n"
    )
    return d


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = build_mamba(d_model=16, n_layers=2, state_size=[5, 3], vocab_size=256)
    out = tmp_path_factory.mktemp("model") / "model"
    model.save_pretrained(out)  # byte-level: no tokenizer files, as a run's model/ folder
    return out


def _logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(ids[i] | ids[:i]) for i >= 1, float64."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    return lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]


def _greedy(model, prompt: bytes, n: int, stop: bytes = b"\n") -> str:
    ids = list(prompt)
    for _ in range(n):
        with torch.no_grad():
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        if nxt == 0 or bytes([nxt]) == stop:
            break
        ids.append(nxt)
    return bytes(ids[len(prompt) :]).decode("utf-8", errors="replace")


def test_byte_tokenizer_is_exact():
    tok = ev.byte_tokenizer()
    text = "héllo Ā wörld 🙂\x00 end"
    ids = tok.encode(text)
    assert ids == list(text.encode())
    assert tok.decode(ids) == text
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (0, 0, None)


def test_scores_equal_direct_log_likelihoods(tasks, model_dir):
    res = ev.run_tasks(
        str(model_dir),
        ["tiny_choice", "tiny_gen", "tiny_docs"],
        include_path=str(tasks),
        include_defaults=False,
        batch_size=2,
        device="cpu",
        log_samples=True,
    )
    model, _ = ev.load_for_eval(str(model_dir))
    model = model.double()
    assert res["config"]["compressmamba_model"]["state_sizes"] == [5, 3]

    # multiple choice: lm-eval scores " choice" after the question (its target delimiter)
    correct = []
    for s in sorted(res["samples"]["tiny_choice"], key=lambda s: s["doc_id"]):
        doc = s["doc"]
        ctx = list(doc["question"].encode())
        lls = [float(_logprobs(model, ctx + list((" " + c).encode()))[len(ctx) - 1 :].sum()) for c in doc["choices"]]
        got = [float(r[0][0]) for r in s["resps"]]
        assert got == pytest.approx(lls, rel=1e-5, abs=1e-4)
        correct.append(float(max(range(len(lls)), key=lls.__getitem__) == doc["answer"]))
    assert res["results"]["tiny_choice"]["acc,none"] == pytest.approx(sum(correct) / len(correct))

    # generation: greedy decoding until "\n" (or 0x00, the end of text), 6 bytes at most
    hits = []
    for s in sorted(res["samples"]["tiny_gen"], key=lambda s: s["doc_id"]):
        direct = _greedy(model, s["doc"]["prompt"].encode(), 6)
        assert s["resps"][0][0] == direct
        hits.append(float(direct == s["doc"]["target"]))
    assert res["results"]["tiny_gen"]["exact_match,none"] == pytest.approx(sum(hits) / len(hits))

    # rolling log-likelihood: every byte of the document after the end-of-text byte 0x00
    nll, nbytes = 0.0, 0
    for doc in DOCS:
        ids = [0, *doc["text"].encode()]
        nll -= float(_logprobs(model, ids).sum())
        nbytes += len(ids) - 1
    assert res["results"]["tiny_docs"]["bits_per_byte,none"] == pytest.approx(nll / nbytes / math.log(2), rel=1e-5)


def test_registered_type_and_stock_transformers_folder(tasks, tmp_path):
    """`lm_eval --model compressmamba` (the registry path) on a plain transformers MambaForCausalLM folder."""
    from transformers import MambaConfig, MambaForCausalLM

    import compressmamba.harness  # noqa: F401  (registers the type)

    torch.manual_seed(1)
    cfg = MambaConfig(vocab_size=256, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2)
    stock = MambaForCausalLM(cfg).eval()
    stock.save_pretrained(tmp_path / "stock")
    manager = lm_eval.tasks.TaskManager(include_path=str(tasks), include_defaults=False)
    res = lm_eval.simple_evaluate(
        model="compressmamba",
        model_args=f"pretrained={tmp_path / 'stock'}",
        tasks=["tiny_docs"],
        task_manager=manager,
        device="cpu",
        log_samples=False,
    )
    nll, nbytes = 0.0, 0
    for doc in DOCS:
        ids = torch.tensor([[0, *doc["text"].encode()]])
        with torch.no_grad():
            lp = torch.log_softmax(stock(ids).logits[0].double(), -1)
        nll -= float(lp[torch.arange(ids.shape[1] - 1), ids[0, 1:]].sum())
        nbytes += ids.shape[1] - 1
    assert res["results"]["tiny_docs"]["bits_per_byte,none"] == pytest.approx(nll / nbytes / math.log(2), rel=1e-5)


@pytest.fixture
def local_tasks_only(monkeypatch):
    """The command line indexes lm-eval's ~15,000 built-in tasks (~12 s); these tests need none."""
    import functools

    monkeypatch.setattr(ev, "task_manager", functools.partial(ev.task_manager, include_defaults=False))


def test_compare_table_and_outputs(tasks, model_dir, tmp_path, capsys, local_tasks_only):
    from compressmamba.cli import main

    rc = main(
        ["evaluate", str(model_dir), "--compare", str(model_dir), "--tasks", "tiny_choice,tiny_docs"]
        + ["--include-path", str(tasks), "--out", str(tmp_path / "out"), "--device", "cpu", "--limit", "2"]
    )
    assert rc == 0
    a = json.loads((tmp_path / "out" / "results.json").read_text())
    b = json.loads((tmp_path / "out" / "results_compare.json").read_text())
    acc = a["results"]["tiny_choice"]["acc,none"]
    assert b["results"]["tiny_choice"]["acc,none"] == acc
    table = (tmp_path / "out" / "summary.md").read_text()
    err = a["results"]["tiny_choice"]["acc_stderr,none"]
    row = next(line for line in table.splitlines() if line.startswith("| tiny_choice | acc |"))
    assert row.count(f"{acc:.4f} ± {err:.4f}") == 2 and row.endswith("| +0.0000 |")
    assert "| tiny_docs | bits_per_byte |" in table
    assert row in capsys.readouterr().out


def test_run_folder_reads_its_model_and_tokenizer(model_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(model_dir, run / "model")
    (run / "config.yaml").write_text("name: r\ndata:\n  name: text_lm\n  tokenizer: byte\n")
    model, tok = ev.load_for_eval(str(run))
    assert model.state_sizes == [5, 3] and tok.encode("Ā") == [0xC4, 0x80]


def test_bad_models_and_tasks_are_one_line_errors(tasks, model_dir, tmp_path):
    with pytest.raises(ValueError, match=r"--tasks: unknown task\(s\) \['no_such_task'\]"):
        ev.run_tasks(str(model_dir), ["no_such_task"], include_path=str(tasks), include_defaults=False)
    with pytest.raises(FileNotFoundError, match="missing"):
        ev.load_for_eval(str(tmp_path / "missing"))
    (tmp_path / "big").mkdir()
    build_mamba(d_model=8, n_layers=1, state_size=2, vocab_size=300).save_pretrained(tmp_path / "big")
    with pytest.raises(FileNotFoundError, match="no tokenizer files and a vocabulary of 300"):
        ev.load_for_eval(str(tmp_path / "big"))


def test_compress_then_evaluate_original_against_compressed(tasks, model_dir, tmp_path, capsys, local_tasks_only):
    from compressmamba.cli import main

    for i in range(2):
        (tmp_path / f"calib{i}.txt").write_text("calibration text, plain and simple. " * 40)
    rc = main(
        ["compress", str(model_dir), "--tau", "0.5", "--calib", str(tmp_path / "calib*.txt"), "--seq-len", "16"]
        + ["--batch-size", "2", "--calib-batches", "2", "--out", str(tmp_path / "small")]
        + ["--evaluate", "tiny_docs", "--include-path", str(tasks), "--eval-out", str(tmp_path / "cmp")]
        + ["--device", "cpu"]
    )
    assert rc == 0
    orig = json.loads((tmp_path / "cmp" / "results.json").read_text())
    small = json.loads((tmp_path / "cmp" / "results_compare.json").read_text())
    sizes = small["config"]["compressmamba_model"]["state_sizes"]
    assert orig["config"]["compressmamba_model"]["state_sizes"] == [5, 3] and sum(sizes) < 8
    table = (tmp_path / "cmp" / "summary.md").read_text()
    assert "| task | metric | original | compressed | difference |" in table
    assert "| tiny_docs | bits_per_byte |" in capsys.readouterr().out


def test_shipped_local_tasks_run(model_dir, monkeypatch):
    """eval/lm_tasks (the README's example) loads and scores, run from the repository root."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    res = ev.run_tasks(
        str(model_dir), ["python_choice", "python_docs"], include_path="eval/lm_tasks", include_defaults=False
    )
    assert 0 <= res["results"]["python_choice"]["acc,none"] <= 1
    assert res["results"]["python_docs"]["bits_per_byte,none"] > 0


@pytest.mark.slow
def test_lm_eval_command_line_with_the_type_registered(tasks, model_dir, tmp_path):
    """`python -m compressmamba.harness` is lm-eval's command with `--model compressmamba` known."""
    import subprocess
    import sys

    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "compressmamba.harness", "--model", "compressmamba"]
    cmd += ["--model_args", f"pretrained={model_dir}", "--tasks", "tiny_docs", "--include_path", str(tasks)]
    cmd += ["--device", "cpu", "--output_path", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = out.rglob("results_*.json")
    assert json.loads(path.read_text())["results"]["tiny_docs"]["bits_per_byte,none"] > 0


def test_model_in_memory(model_dir):
    from compressmamba.harness import CompressMambaLM

    model, _ = ev.load_for_eval(str(model_dir))
    lm = CompressMambaLM(pretrained=model, device="cpu")
    ((ll, greedy),) = lm.loglikelihood([_request("ab", "c")])
    assert ll == pytest.approx(float(_logprobs(model.double(), list(b"abc"))[-1]), rel=1e-5)
    with pytest.raises(ValueError, match="needs its tokenizer"):
        CompressMambaLM(pretrained=build_mamba(d_model=8, n_layers=1, state_size=2, vocab_size=300), device="cpu")


def _request(context, continuation):
    from lm_eval.api.instance import Instance

    return Instance(request_type="loglikelihood", doc={}, arguments=(context, continuation), idx=0)


def test_a_hub_task_offline_is_one_line_naming_task_dataset_and_include_path(
    model_dir, tmp_path, monkeypatch, capsys
):
    """Offline (HF_HUB_OFFLINE=1, set by conftest) with an empty dataset cache: lambada_openai's
    dataset cannot be fetched; the command ends in one line, not a ConnectionError traceback."""
    import datasets

    from compressmamba.cli import main

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "empty_cache")
    rc = main(["evaluate", str(model_dir), "--tasks", "lambada_openai", "--limit", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()  # transformers' weight-loading bar comes first
    assert rc == 2 and "Traceback" not in "".join(err), err
    err = err[-1]
    assert err.startswith("compressmamba evaluate: error: --tasks: lambada_openai (dataset EleutherAI/lambada_openai)")
    assert "--include-path" in err
