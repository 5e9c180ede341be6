"""Whole-model throughput beside transformers' MambaForCausalLM at the same size: training step
(forward + backward) tokens/s and greedy generation tokens/s.

    python -m compressmamba.eval.bench_model                  # CPU: batch 4, L 256, d_model 256, 4 layers, N 16
    python -m compressmamba.eval.bench_model --device cuda --batch 8 --seqlen 2048 --d-model 768 --layers 24
    python -m compressmamba.eval.bench_model --states 128,8:12:16:10:14:12   # uniform 128 vs per-layer

An entry of ``--states`` with colons is a list of per-layer sizes, repeated over the layers (the
kind of sizes a compressed run ends with); transformers' ``MambaConfig`` has one size for every
layer, so its row at such an entry uses the rounded mean. The last column is each training step's
speed-up over the first entry's, per model.
"""

from __future__ import annotations

import argparse

import torch
from compressmamba.eval.bench_timing import best_time as _time
from transformers import MambaConfig, MambaForCausalLM

from compressmamba.models.mamba import build_mamba


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--states", type=lambda s: s.split(","), default=["16"], help="sizes; a:b:c = per layer")
    p.add_argument("--models", type=lambda s: s.split(","), default=["compressmamba", "transformers"])
    p.add_argument("--gen-tokens", type=int, default=32)
    p.add_argument("--reps", type=int, default=2)
    a = p.parse_args(argv)
    x = torch.randint(0, 256, (a.batch, a.seqlen), device=a.device)
    prompt = x[:1, :16]
    gen = dict(max_new_tokens=a.gen_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
    print(
        f"device {a.device}, batch {a.batch}, L {a.seqlen}, d_model {a.d_model}, {a.layers} layers, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print("| model | N | train fwd+bwd s | train tokens/s | generate tokens/s | train speed-up vs first |")
    print("|---|---|---|---|---|---|")
    first, speedups = {}, []
    for spec in a.states:
        sizes = [int(v) for v in spec.split(":")]
        per_layer = [sizes[i % len(sizes)] for i in range(a.layers)]
        mean = sum(per_layer) / len(per_layer)
        n_mean = round(mean)
        label = str(sizes[0]) if len(sizes) == 1 else f"{min(sizes)}..{max(sizes)} (mean {mean:.1f})"
        models = {  # built one at a time: two 24-layer models need not share the device
            "compressmamba": lambda sizes=per_layer: build_mamba(
                d_model=a.d_model, n_layers=a.layers, state_sizes=sizes, vocab_size=256
            ),
            "transformers": lambda n=n_mean: MambaForCausalLM(
                MambaConfig(vocab_size=256, hidden_size=a.d_model, num_hidden_layers=a.layers, state_size=n)
            ),
        }
        models = {name: build for name, build in models.items() if name in a.models}
        res = {}
        for name, build in models.items():
            m = build().to(a.device).train()
            t = _time(lambda m=m: m(input_ids=x, labels=x).loss.backward(), a.device, a.reps)
            m.eval()
            with torch.no_grad():
                tg = _time(lambda m=m: m.generate(prompt, **gen), a.device, 1)
            del m
            if a.device.startswith("cuda"):
                torch.cuda.empty_cache()
            res[name] = t
            first.setdefault(name, t)
            n = label if name == "compressmamba" else str(n_mean)
            row = f"{t:.3f} | {a.batch * a.seqlen / t:.0f} | {a.gen_tokens / tg:.1f} | {first[name] / t:.2f}x"
            print(f"| {name} | {n} | {row} |")
        if len(res) == 2:
            ours_vs = res["transformers"] / res["compressmamba"]
            print(f"| speed-up (train) | {label} | {ours_vs:.1f}x | | | |")
        if "compressmamba" in res:
            speedups.append((label, first["compressmamba"] / res["compressmamba"]))
    for label, sp in speedups[1:]:  # issue 21: per-layer N around 12 at least 2.5x faster than N = 128
        verdict = "met" if sp >= 2.5 else "MISSED"
        print(f"- train step at N={label} vs N={speedups[0][0]}: {sp:.2f}x (target >= 2.5x: {verdict})")
    return speedups


if __name__ == "__main__":
    main()
