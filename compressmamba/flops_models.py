"""How the library's own modules count their training FLOPs (rules: compressmamba/flops.py).

Mamba-1's and Mamba-2's mixers (a hybrid's mixers are their subclasses, so they count the same),
the LRU model, and the classifiers whose head sees one pooled row per sequence.
"""

from __future__ import annotations

import math

from torch import nn

from .flops import CHANNEL_FWD, SCAN_BWD, SCAN_FWD, Term, depthwise_conv, elementwise, linear, matmul, module_terms
from .flops import register_flops as _register
from .models.lru import LRULayer, LRUModel
from .models.mamba import MambaClassifier, MambaMixer
from .models.mamba2 import Mamba2Mixer


@_register(MambaMixer)
def mamba_mixer(m: MambaMixer, name: str, b: int, l: int) -> list[Term]:
    """in_proj, the depthwise conv, x_proj, the dt projection (a product with dt_proj's weight),
    the selective scan at this layer's N, out_proj."""
    t, d, n = b * l, m.d_inner, m.state_size
    return [
        *linear(f"{name}.in_proj", m.in_proj, t),
        *depthwise_conv(f"{name}.conv1d", d, m.conv1d.weight.shape[-1], t, m.conv1d.bias is not None),
        *linear(f"{name}.x_proj", m.x_proj, t),
        matmul(f"{name}.dt_proj", t, d, m.dt_rank),
        Term(f"{name}.scan", "scan", float(SCAN_FWD * t * d * n), float(SCAN_BWD * t * d * n), True),
        elementwise(f"{name}.scan_channels", CHANNEL_FWD * t * d, in_scan=True),
        *linear(f"{name}.out_proj", m.out_proj, t),
    ]


def ssd_terms(name: str, b: int, l: int, heads: int, head_dim: int, groups: int, n: int, chunk: int) -> list[Term]:
    """The chunked SSD (kernels/ssd/cpu.py) on b sequences of l steps, chunks of Q = min(chunk, l)
    with the last zero-padded: its matrix products and its elementwise decays."""
    q = min(chunk, l)
    nc = -(-l // q)
    lp, h, p = nc * q, heads, head_dim
    prods = [
        matmul(f"{name}.ssd.CB", b * nc * groups * q, q, n, in_scan=True),  # C·Bᵀ per chunk and group
        matmul(f"{name}.ssd.intra", b * nc * h * q, p, q, in_scan=True),  # (C·Bᵀ ∘ decay) @ (Δx) per head
        matmul(f"{name}.ssd.states", b * nc * h * p, n, q, in_scan=True),  # chunk states (Δx ∘ decay)ᵀ @ B
        matmul(f"{name}.ssd.inter", b * nc * h * q, p, n, in_scan=True),  # C @ entering stateᵀ
    ]
    ew = (
        3 * b * nc * h * q * q  # decay matrix (difference, exp), its product with C·Bᵀ
        + b * lp * h * (5 + 6 * p)  # per (step, head) Δ·A, cumsum, the decay to the chunk end (2), exp(a);
        # per (step, head, channel) Δx, its decay, exp(a)·(C H), the intra + inter sum, the D skip (2)
        + 2 * b * nc * h * p * n  # state passing: decay and add per chunk
    )
    return [*prods, Term(f"{name}.ssd.decays", "scan", float(ew), 2.0 * ew, True)]


@_register(Mamba2Mixer)
def mamba2_mixer(m: Mamba2Mixer, name: str, b: int, l: int) -> list[Term]:
    """in_proj, the depthwise conv over x and the B/C path (at its width N_in when the layer has a
    state projection), ``bc_proj`` (B and C, each (G, r, N_in) per token), the SSD at r, out_proj."""
    t, g, n = b * l, m.n_groups, m.state_size
    conv = m.conv1d.weight.shape[0]
    out = [
        *linear(f"{name}.in_proj", m.in_proj, t),
        *depthwise_conv(f"{name}.conv1d", conv, m.conv1d.weight.shape[-1], t, m.conv1d.bias is not None),
    ]
    if m.bc_proj is not None:
        out.append(matmul(f"{name}.bc_proj", 2 * t * g, n, m.bc_width))
    out += ssd_terms(name, b, l, m.n_heads, m.head_dim, g, n, m.config.chunk_size)
    out += linear(f"{name}.out_proj", m.out_proj, t)
    return out


@_register(LRULayer)
def lru_layer(m: LRULayer, name: str, b: int, l: int) -> list[Term]:
    """B̃ (complex (n, H)) on real inputs, the FFT convolution at this layer's n, Re(C h), the D
    skip. Complex products count as 4 real ones; FFTs as 5 M log2 M for M = 2l."""
    t, h, n = b * l, m.d_model, m.state_size
    fft_len = 2 * l
    fft = 5.0 * fft_len * math.log2(fft_len)
    # per sequence and state: x's FFT, the product, the inverse; once per state: the kernel λ^m (l
    # complex powers, 2 each) and its FFT
    scan = b * n * (2 * fft + 6 * fft_len) + n * (fft + 2 * l)
    return [
        Term(f"{name}.B", "matmul", 4 * 2.0 * t * n * h, 4 * 4.0 * t * n * h),
        Term(f"{name}.scan", "scan", float(scan), 2.0 * scan, True),
        Term(f"{name}.C", "matmul", 4 * 2.0 * t * n * h, 4 * 4.0 * t * n * h),
        elementwise(f"{name}.D", 2 * t * h),
    ]


def _encoder_terms(model, name: str, b: int, l: int) -> list[Term]:
    """A classifier's encoder: a linear map of raw features (whose input needs no gradient) or
    an embedding (a lookup: nothing)."""
    enc = model.encoder
    return linear(_join(name, "encoder"), enc, b * l, input_grad=False) if isinstance(enc, nn.Linear) else []


def _join(name: str, child: str) -> str:
    return f"{name}.{child}" if name else child


@_register(LRUModel)
def lru_model(model: LRUModel, name: str, b: int, l: int) -> list[Term]:
    """The encoder and blocks over every position (twice for a ``pair`` model: two documents of
    length l), the head on one pooled row per sequence (or pair)."""
    docs = 2 if model.pair else 1
    out = []
    for _ in range(docs):
        out += _encoder_terms(model, name, b, l)
        out += module_terms(model.blocks, b, l, _join(name, "blocks"))
    out += module_terms(model.head, b, 1, _join(name, "head"))
    return out


@_register(MambaClassifier)
def mamba_classifier(model: MambaClassifier, name: str, b: int, l: int) -> list[Term]:
    """The encoder and Mamba blocks over every position, the head on one pooled row per sequence."""
    return [
        *_encoder_terms(model, name, b, l),
        *module_terms(model.layers, b, l, _join(name, "layers")),
        *module_terms(model.head, b, 1, _join(name, "head")),
    ]
