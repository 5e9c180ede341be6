"""Whole-model throughput beside transformers' MambaForCausalLM at the same size: training step
(forward + backward) tokens/s and greedy generation tokens/s.

    python -m compressmamba.eval.bench_model                  # CPU: batch 4, L 256, d_model 256, 4 layers, N 16
    python -m compressmamba.eval.bench_model --device cuda --batch 8 --seqlen 2048 --d-model 768 --layers 24
"""

from __future__ import annotations

import argparse

import torch
from compressmamba.eval.bench_scan import _time
from transformers import MambaConfig, MambaForCausalLM

from compressmamba.models.mamba import build_mamba


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--states", type=lambda s: [int(x) for x in s.split(",")], default=[16])
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
    print("| model | N | train fwd+bwd s | train tokens/s | generate tokens/s |\n|---|---|---|---|---|")
    for n in a.states:
        models = {
            "compressmamba": build_mamba(d_model=a.d_model, n_layers=a.layers, state_size=n, vocab_size=256),
            "transformers": MambaForCausalLM(
                MambaConfig(vocab_size=256, hidden_size=a.d_model, num_hidden_layers=a.layers, state_size=n)
            ),
        }
        res = {}
        for name, m in models.items():
            m.to(a.device).train()
            t = _time(lambda m=m: m(input_ids=x, labels=x).loss.backward(), a.device, a.reps)
            m.eval()
            with torch.no_grad():
                tg = _time(lambda m=m: m.generate(prompt, **gen), a.device, 1)
            res[name] = t
            print(f"| {name} | {n} | {t:.3f} | {a.batch * a.seqlen / t:.0f} | {a.gen_tokens / tg:.1f} |")
        print(f"| speed-up (train) | {n} | {res['transformers'] / res['compressmamba']:.1f}x | | |")


if __name__ == "__main__":
    main()
