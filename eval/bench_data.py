"""Token-store benchmarks on real text from this machine's disk (Python sources and docs).

    python -m compressmamba.eval.bench_data                       # everything, 100 MB / 15 & 150 MB
    python -m compressmamba.eval.bench_data --only prepare --mb 100 --workers 1,2
    python -m compressmamba.eval.bench_data --only rss,loader,first_step

- prepare: MB/s and tokens/s of ``compressmamba prepare-data`` (byte and a BPE tokenizer trained here
  on standard-library text), per worker count, and the builder's peak RSS.
- rss: peak RSS of a short ``compressmamba train`` run on a reused store of two corpus sizes.
- loader: random packed batches (StepBatches over the memory-mapped rows) per second.
- first_step: seconds from launching ``compressmamba train`` on a reused store to its first step.

The corpus is the standard library and site-packages' .py/.pyi/.txt/.md/.rst files (sorted, one
JSONL document per file) up to the size asked for; nothing is downloaded. Timings in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

_SUFFIXES = (".py", ".pyi", ".txt", ".md", ".rst")


def source_files() -> list[Path]:
    """Text files of the standard library and site-packages, sorted, deduplicated."""
    roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
    seen, out = set(), []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for f in sorted(filenames):
                p = Path(dirpath) / f
                if p.suffix in _SUFFIXES and p.is_file() and p.resolve() not in seen:
                    seen.add(p.resolve())
                    out.append(p)
    return out


def write_corpus(folder: Path, mb: float, shard_mb: float = 25.0) -> tuple[list[Path], int]:
    """JSONL shards of about ``shard_mb`` holding ``mb`` MB of text; returns (shards, text bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    target, shard_target = int(mb * 1e6), int(shard_mb * 1e6)
    shards, total, f, in_shard = [], 0, None, 0
    for p in source_files():
        text = p.read_bytes().decode("utf-8", errors="replace")
        if not text.strip():
            continue
        if f is None or in_shard >= shard_target:
            if f:
                f.close()
            shards.append(folder / f"shard{len(shards):03d}.jsonl")
            f, in_shard = open(shards[-1], "w"), 0
        f.write(json.dumps({"text": text}) + "\n")
        n = len(text.encode("utf-8"))
        total += n
        in_shard += n
        if total >= target:
            break
    if f:
        f.close()
    if total < target:
        raise SystemExit(f"only {total / 1e6:.1f} MB of text on this machine, asked for {mb} MB")
    return shards, total


def train_bpe(out: Path, vocab_size: int = 8192, mb: float = 8.0) -> Path:
    """A byte-level BPE trained on the first ``mb`` MB of standard-library text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts, n = [], 0
    for p in sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py")):
        texts.append(p.read_text(encoding="utf-8", errors="replace"))
        n += len(texts[-1])
        if n >= mb * 1e6:
            break
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))
    return out


_RUSAGE = (
    "import resource, subprocess, sys, time, json; t = time.time(); "
    "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
    "ru = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "print(json.dumps({'rc': r.returncode, 'wall': time.time() - t, 'start': t, "
    "'rss_mb': ru.ru_maxrss / 1024, 'cpu': ru.ru_utime + ru.ru_stime, "
    "'out': r.stdout[-2000:], 'err': r.stderr[-2000:]}))"
)


def measured(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``; wall seconds, start time and the peak RSS (MB) of its largest process."""
    res = subprocess.run([sys.executable, "-c", _RUSAGE, *cmd], capture_output=True, text=True, env=env)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    if r["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r['err']}")
    return r


def write_recipe(path: Path, files: str, tokenizer: str, cache: Path, seq_len: int) -> Path:
    path.write_text(
        "name: bench/data\nseed: 0\n"
        "model: {name: mamba, d_model: 64, n_layers: 2, state_size: 16, expand: 2}\n"
        f"data: {{name: text_lm, files: '{files}', tokenizer: '{tokenizer}', seq_len: {seq_len}, "
        f"val_fraction: 0.01, cache_dir: '{cache}'}}\n"
        "optim: {lr: 0.003}\n"
        "train: {steps: 20, batch_size: 8, eval_every: 1000, eval_batches: 2, log_every: 1, progress: false}\n"
        "reduction: {mode: none}\n"
    )
    return path


def _cli() -> list[str]:
    return [sys.executable, "-m", "compressmamba"]


def bench_prepare(work: Path, mb: float, workers: list[int], env: dict) -> None:
    shards, nbytes = write_corpus(work / f"corpus{mb:g}", mb)
    bpe = train_bpe(work / "bpe" / "tokenizer.json")
    print(f"\n### prepare: {nbytes / 1e6:.1f} MB of text in {len(shards)} JSONL shards\n")
    print("| tokenizer | workers | seconds | MB/s | tokens | tokens/s | CPU s (all processes) | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, tok in (("byte", "byte"), ("BPE 8192", str(bpe))):
        for w in workers:
            cache = work / "cache-prepare"
            shutil.rmtree(cache, ignore_errors=True)
            recipe = write_recipe(work / "prep.yaml", str(shards[0].parent / "*.jsonl"), tok, cache, 2048)
            r = measured([*_cli(), "prepare-data", str(recipe), f"data.num_proc={w}"], env)
            m = json.loads(next(cache.glob("*/manifest.json")).read_text())
            c, secs = m["counts"], m["build_seconds"]
            print(
                f"| {name} | {w} | {secs:.1f} | {c['source_bytes'] / 1e6 / secs:.1f} | {c['tokens']:,} "
                f"| {c['tokens'] / secs / 1e6:.2f} M | {r['cpu']:.0f} | {r['rss_mb']:.0f} |"
            )
            shutil.rmtree(cache, ignore_errors=True)


def bench_rss(work: Path, sizes: list[float], env: dict, seq_len: int) -> None:
    print(f"\n### peak RSS of `compressmamba train` (20 steps, batch 8 × {seq_len}, byte tokens, reused store)\n")
    print("| corpus MB | store MB | prepare-data peak RSS MB | train peak RSS MB |\n|---|---|---|---|")
    for mb in sizes:
        shards, _ = write_corpus(work / f"corpus{mb:g}", mb)
        cache = work / f"cache-rss{mb:g}"
        recipe = write_recipe(work / f"rss{mb:g}.yaml", str(shards[0].parent / "*.jsonl"), "byte", cache, seq_len)
        prep = measured([*_cli(), "prepare-data", str(recipe)], env)
        run = measured([*_cli(), "train", str(recipe), f"out_dir={work / f'run{mb:g}'}"], env)
        store_mb = sum(f.stat().st_size for f in cache.glob("*/tokens.bin")) / 1e6
        print(f"| {mb:g} | {store_mb:.0f} | {prep['rss_mb']:.0f} | {run['rss_mb']:.0f} |")


def bench_loader(work: Path, mb: float, seconds: float = 3.0) -> None:
    import numpy as np

    from compressmamba.data.text import text_lm
    from compressmamba.training.data import StepBatches

    shards, _ = write_corpus(work / f"corpus{mb:g}", mb)
    d = text_lm(files=str(shards[0].parent / "*.jsonl"), seq_len=2048, val_fraction=0.01, cache_dir=work / "cache-load")
    b = StepBatches(d.train, 8, seed=0)
    print(f"\n### loader: random packed batches of 8 × 2048 from a {d.train.length / 1e6:.0f} M-token store\n")
    print("| path | batches/s | tokens/s |\n|---|---|---|")
    rng = np.random.default_rng(0)

    def one_row(_step, rows=d.train):
        i = int(rng.integers(0, rows.n)) * rows.seq_len
        return rows.read(i, i + rows.seq_len + 1)

    cases = (
        ("StepBatches.batch (8 rows + collate, int64 tensors)", b.batch, 8),
        ("PackedRows.read (1 row, numpy)", one_row, 1),
    )
    for name, fn, rows_per_call in cases:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn(n % b.steps_per_epoch)
            n += 1
        dt = time.perf_counter() - t0
        print(f"| {name} | {n * rows_per_call / 8 / dt:,.0f} | {n * rows_per_call * 2049 / dt / 1e6:.1f} M |")


def bench_first_step(work: Path, mb: float, env: dict) -> None:
    shards, _ = write_corpus(work / f"corpus{mb:g}", mb)
    cache = work / "cache-first"
    recipe = write_recipe(work / "first.yaml", str(shards[0].parent / "*.jsonl"), "byte", cache, 256)
    measured([*_cli(), "prepare-data", str(recipe)], env)
    from compressmamba.data.text import text_lm

    t0 = time.perf_counter()
    text_lm(files=str(shards[0].parent / "*.jsonl"), seq_len=256, val_fraction=0.01, cache_dir=cache)
    opened = time.perf_counter() - t0
    print(f"\n### from `compressmamba train` to the first step, reused store of {mb:g} MB\n")
    print(f"text_lm on the reused store (stat sources, check manifest, open split): {opened * 1e3:.0f} ms\n")
    imports = measured([sys.executable, "-c", "import compressmamba.cli as c; c.build_parser()"], env)
    print(f"importing the command line (torch, transformers, accelerate): {imports['wall']:.1f} s\n")
    print("| run | seconds to first step | whole command s |\n|---|---|---|")
    for k in range(2):
        run_dir = work / f"first{k}"
        r = measured([*_cli(), "train", str(recipe), f"out_dir={run_dir}", "train.steps=1"], env)
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
        first = min(x["wall_time"] for x in rows if "wall_time" in x)
        print(f"| {k + 1} | {first - r['start']:.1f} | {r['wall']:.1f} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="prepare,rss,loader,first_step")
    p.add_argument("--mb", type=float, default=100.0, help="corpus size for prepare")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--rss-mb", default="15,150")
    p.add_argument("--rss-seq-len", type=int, default=256)
    p.add_argument("--loader-mb", type=float, default=100.0)
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed after)")
    a = p.parse_args(argv)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="bench_data-"))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    import numpy as np
    import tokenizers

    versions = f"python {sys.version.split()[0]}, numpy {np.__version__}, tokenizers {tokenizers.__version__}"
    print(f"{versions}, {os.cpu_count()} CPUs")
    try:
        only = a.only.split(",")
        if "prepare" in only:
            bench_prepare(work, a.mb, [int(w) for w in a.workers.split(",")], env)
        if "rss" in only:
            bench_rss(work, [float(x) for x in a.rss_mb.split(",")], env, a.rss_seq_len)
        if "loader" in only:
            bench_loader(work, a.loader_mb)
        if "first_step" in only:
            bench_first_step(work, a.loader_mb, env)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
