"""Which model fits on how many 80 GB GPUs (docs/scale.md): from each GPU recipe's model shapes
(written here: the hub is not needed), the parameters, the training state of AdamW in mixed
precision, and the activations at the recipe's batch and length with and without activation
checkpointing; then the memory per GPU under DDP and under FSDP2 on 1, 2, 4 and 8 GPUs.

    python -m compressmamba.eval.scale_table      # the markdown table docs/scale.md holds

An estimate, not a measurement: bf16 compute, fp32 master weights, gradients and two Adam
moments (16 bytes a parameter; DDP holds them all on every GPU, FSDP2 a 1/N shard), FSDP2's two
gathered bf16 blocks (the one computing and the one prefetched), the tensors backward keeps per
token (bf16; the LM head's logits and their gradient in fp32), and 10 % of each GPU kept free
for the allocator and the CUDA context. Shapes: the published configs as recalled here, checked
against each model's nominal size (the Params column).
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9
GPU_GB, USABLE = 80, 0.9
WORLDS = (1, 2, 4, 8)


@dataclass
class Shape:
    name: str
    d: int  # hidden size
    vocab: int
    layers: list[str]  # per layer: "m" Mamba-2 mixer, "a" attention, "f" MLP, "p" parallel (Falcon-H1: a+m+f)
    d_inner: int
    heads: int  # SSM heads
    groups: int
    state: int
    ffn: int = 0
    ffn_mats: int = 3  # SwiGLU 3 matrices, squared ReLU 2
    attn_heads: int = 0
    kv_heads: int = 0
    head_dim: int = 128
    tied: bool = True
    batch: int = 4  # per GPU, the recipe's train.batch_size
    seq: int = 4096  # the recipe's data.seq_len
    recipe: str = ""


def mamba2(name, d, n, batch=8, seq=2048, recipe=""):
    return Shape(name, d, 50288, ["m"] * n, 2 * d, 2 * d // 64, 1, 128, batch=batch, seq=seq, recipe=recipe)


SHAPES = [
    mamba2("Mamba-2 130M", 768, 24, recipe="lm/mamba2_130m_gpu"),
    mamba2("Mamba-2 370M", 1024, 48),
    mamba2("Mamba-2 780M", 1536, 48),
    mamba2("Mamba-2 1.3B", 2048, 48),
    mamba2("Mamba-2 2.7B", 2560, 64),
    Shape("Granite 4.0-H micro", 2048, 100352, ["mf"] * 36 + ["af"] * 4, 4096, 64, 1, 128, ffn=8192,
          attn_heads=16, kv_heads=4, recipe="hybrid/granite_4_0_h_micro_gpu"),
    Shape("Falcon-H1 0.5B", 1024, 32784, ["p"] * 36, 1536, 24, 1, 128, ffn=2048, attn_heads=8, kv_heads=2,
          head_dim=64, tied=False, recipe="hybrid/falcon_h1_0.5b_gpu"),
    Shape("Falcon-H1 7B", 3072, 130048, ["p"] * 44, 6144, 48, 1, 256, ffn=8192, attn_heads=12, kv_heads=2,
          tied=False),
    Shape("Nemotron-H 8B", 4096, 131072, ["m", "f"] * 24 + ["a", "f"] * 2, 8192, 128, 8, 128, ffn=21504,
          ffn_mats=2, attn_heads=32, kv_heads=8, tied=False),
]  # fmt: skip


def _mixer_params(s: Shape) -> dict[str, int]:
    gn = s.groups * s.state
    m = s.d * (2 * s.d_inner + 2 * gn + s.heads) + (s.d_inner + 2 * gn) * 5 + 3 * s.heads + s.d_inner
    m += s.d_inner * s.d
    a = s.d * s.head_dim * (2 * s.attn_heads + 2 * s.kv_heads)
    f = s.ffn_mats * s.d * s.ffn
    return {"m": m, "a": a, "f": f}


def block_params(s: Shape, kind: str) -> int:
    p = _mixer_params(s)
    parts = "amf" if kind == "p" else kind
    return sum(p[c] for c in parts) + 2 * s.d  # and its norms


def params(s: Shape) -> int:
    emb = s.vocab * s.d * (1 if s.tied else 2)
    return emb + sum(block_params(s, k) for k in s.layers) + s.d


def _saved_per_token(s: Shape, kind: str) -> int:
    """Elements backward keeps per token in a block of ``kind`` (bf16)."""
    gn = s.groups * s.state
    saved = {
        "m": 2 * s.d + (2 * s.d_inner + 2 * gn + s.heads) + (s.d_inner + 2 * gn) + 3 * s.d_inner,
        "a": 2 * s.d + s.head_dim * (s.attn_heads + 2 * s.kv_heads) + s.attn_heads * s.head_dim,
        "f": 2 * s.d + (s.ffn_mats + 1) * s.ffn,
    }
    parts = "amf" if kind == "p" else kind
    return sum(saved[c] for c in parts)


def activations(s: Shape, checkpointing: bool) -> float:
    """Bytes of activations per GPU at the recipe's batch and length."""
    tokens = s.batch * s.seq
    logits = tokens * s.vocab * 4 * 2  # fp32 logits and their gradient
    if checkpointing:  # each block keeps its input; one block's activations live during its recompute
        kept = len(s.layers) * s.d + max(_saved_per_token(s, k) for k in s.layers)
    else:
        kept = sum(_saved_per_token(s, k) for k in s.layers)
    return tokens * kept * 2 + logits


def per_gpu(s: Shape, world: int, fsdp: bool, checkpointing: bool) -> float:
    state = 16 * params(s)
    if fsdp:
        state = state / world + 2 * 2 * max(block_params(s, k) for k in s.layers)
    return (state + activations(s, checkpointing)) / GB


def _cell(gb: float) -> str:
    return f"{gb:.0f}" if gb <= GPU_GB * USABLE else f"**{gb:.0f}**"


def table() -> str:
    head = ["Model (recipe)", "Params", "Train state", "Act. (AC off / on)", "DDP", *[f"FSDP2 x{w}" for w in WORLDS]]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in SHAPES:
        p = params(s)
        act = f"{activations(s, False) / GB:.1f} / {activations(s, True) / GB:.1f}"
        ddp = f"{_cell(per_gpu(s, 1, False, False))} / {_cell(per_gpu(s, 1, False, True))}"
        fsdp = [f"{_cell(per_gpu(s, w, True, False))} / {_cell(per_gpu(s, w, True, True))}" for w in WORLDS]
        name = f"{s.name} ({s.recipe})" if s.recipe else s.name
        name += f", b{s.batch} x {s.seq}"
        cells = [name, f"{p / 1e9:.2f} B", f"{16 * p / GB:.0f} GB", f"{act} GB", ddp, *fsdp]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
    print(f"\nGB per GPU, activation checkpointing off / on; **bold**: over {USABLE:.0%} of {GPU_GB} GB.")
