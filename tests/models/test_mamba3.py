"""Mamba-3 with per-layer state sizes: the mixer against mamba-ssm's layer math (written here from
its conventions, in its own weight layout), generation against the full pass, our Hugging Face
folder, and mamba-ssm's folder in and out."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from compressmamba.models import load_pretrained
from compressmamba.models.mamba3 import (
    CompressMamba3ForCausalLM,
    Mamba3Cache,
    build_mamba3,
    export_mamba_ssm,
    mamba_ssm_state_dict,
)

VARIANTS = [  # is_mimo, is_outproj_norm, rope_fraction
    (False, False, 0.5),
    (False, True, 1.0),
    (True, False, 0.5),
    (True, True, 1.0),
]
IDS = ["siso", "siso_norm_rope1", "mimo", "mimo_norm_rope1"]


def _model(mimo, norm, rope, sizes=(12, 8), seed=0, **kw):
    torch.manual_seed(seed)
    m = build_mamba3(
        d_model=24, n_layers=len(sizes), state_size=list(sizes), head_dim=6, n_groups=2, vocab_size=37,
        is_mimo=mimo, mimo_rank=3, is_outproj_norm=norm, rope_fraction=rope, chunk_size=8, **kw,
    )  # fmt: skip
    with torch.no_grad():  # every parameter non-trivial (no zeros, no ones)
        for name, p in m.named_parameters():
            if "dt_bias" in name:
                p.copy_(torch.randn_like(p) - 2)
            elif p.dim() <= 3 and "embeddings" not in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    return m.double().eval()


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _rotate(t, phi, halves):
    """mamba-ssm's rotations: SISO pairs (2i, 2i + 1), MIMO pairs (i, i + N/2); angle i < S."""
    n, s = t.shape[-1], phi.shape[-1]
    if halves:
        a, b = t[..., : n // 2], t[..., n // 2 :]
        c = F.pad(torch.cos(phi), (0, n // 2 - s), value=1.0)
        sn = F.pad(torch.sin(phi), (0, n // 2 - s), value=0.0)
        return torch.cat([a * c - b * sn, a * sn + b * c], -1)
    pairs = t.unflatten(-1, (n // 2, 2))
    c = F.pad(torch.cos(phi), (0, n // 2 - s), value=1.0)
    sn = F.pad(torch.sin(phi), (0, n // 2 - s), value=0.0)
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * c - b * sn, a * sn + b * c], -1).flatten(-2)


def _mamba_ssm_layer(sd, cfg, n, u):
    """mamba-ssm's Mamba3.forward, one step at a time, from its state dict (its layout) alone."""
    di, hp, g = cfg.intermediate_size, cfg.head_dim, cfg.n_groups
    h, r = di // hp, cfg.mimo_rank
    s = (int(n * cfg.rope_fraction) - int(n * cfg.rope_fraction) % 2) // 2
    proj = u @ sd["in_proj.weight"].T
    z, x, B, C, dd_dt, dd_A, trap, ang = torch.split(proj, [di, di, n * g * r, n * g * r, h, h, h, s], dim=-1)
    rms = lambda t, w: t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-5) * w
    B = rms(B.unflatten(-1, (r, g, n)), sd["B_norm.weight"]).repeat_interleave(h // g, dim=-2)
    C = rms(C.unflatten(-1, (r, g, n)), sd["C_norm.weight"]).repeat_interleave(h // g, dim=-2)
    A = -(dd_A.clamp_min(0) + 1 / (1 - dd_A.clamp_max(0)))
    A = A.clamp(max=-cfg.A_floor)
    dt = F.softplus(dd_dt + sd["dt_bias"])
    lam = torch.sigmoid(trap)
    x, z = x.unflatten(-1, (h, hp)), z.unflatten(-1, (h, hp))
    mx = sd["mimo_x"] if cfg.is_mimo else torch.ones(h, 1, hp, dtype=u.dtype)
    b, L = u.shape[:2]
    angle = torch.zeros(b, h, s, dtype=u.dtype)
    state = torch.zeros(b, h, hp, n, dtype=u.dtype)
    k_prev = torch.zeros(b, r, h, n, dtype=u.dtype)
    v_prev = torch.zeros(b, r, h, hp, dtype=u.dtype)
    outs = []
    for t in range(L):
        angle = angle + torch.tanh(ang[:, t])[:, None] * dt[:, t, :, None] * math.pi
        k = _rotate(B[:, t] + sd["B_bias"].transpose(0, 1), angle[:, None], cfg.is_mimo)
        q = _rotate(C[:, t] + sd["C_bias"].transpose(0, 1), angle[:, None], cfg.is_mimo)
        v = x[:, t, None] * mx.transpose(0, 1)  # (b, r, h, p)
        alpha = torch.exp(A[:, t] * dt[:, t])[..., None, None]
        state = alpha * state + ((1 - lam[:, t]) * dt[:, t])[..., None, None] * alpha * torch.einsum(
            "brhp,brhn->bhpn", v_prev, k_prev
        )
        state = state + (lam[:, t] * dt[:, t])[..., None, None] * torch.einsum("brhp,brhn->bhpn", v, k)
        y = torch.einsum("bhpn,brhn->brhp", state, q) + sd["D"][:, None] * v
        zr = z[:, t, None] * (sd["mimo_z"].transpose(0, 1) if cfg.is_mimo else 1)
        if cfg.is_outproj_norm:
            y = rms(y, sd["norm.weight"].view(h, hp)) * F.silu(zr)
        else:
            y = y * F.silu(zr)
        y = (y * sd["mimo_o"].transpose(0, 1)).sum(1) if cfg.is_mimo else y[:, 0]
        outs.append(y.flatten(-2) @ sd["out_proj.weight"].T)
        k_prev, v_prev = k, v
    return torch.stack(outs, 1)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_mixer_matches_mamba_ssm_layer_math(variant):
    m = _model(*variant, sizes=(12,))
    sd = mamba_ssm_state_dict(m)
    prefix = "backbone.layers.0.mixer."
    own = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    u = torch.randn(2, 19, 24, dtype=torch.float64)
    with torch.no_grad():
        got = m.ssm_layers()[0](u)
        want = _mamba_ssm_layer(own, m.config, 12, u)
    assert _rel(got, want) < 1e-6  # float64, but the out-projection norm computes in float32


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_decoding_equals_the_full_pass(variant):
    m = _model(*variant)
    ids = torch.randint(0, 37, (2, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = m(ids).logits
        cache = Mamba3Cache(2)
        parts = [m(ids[:, :9], cache=cache).logits]
        parts += [m(ids[:, t : t + 1], cache=cache).logits for t in range(9, 23)]
    assert _rel(torch.cat(parts, 1), full) < 1e-6


def test_generate_extends_greedily_with_the_cache():
    m = _model(True, False, 0.5)
    prompt = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = m.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
        ids = prompt
        for _ in range(6):
            ids = torch.cat([ids, m(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)


def test_save_pretrained_and_auto_class_keep_per_layer_sizes(tmp_path):
    m = _model(True, True, 0.5, sizes=(12, 8), rope_angles=[3, 1])
    m.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "compressmamba3" and cfg["state_sizes"] == [12, 8] and cfg["rope_angles"] == [3, 1]
    ids = torch.randint(0, 37, (2, 11))
    for loaded in (AutoModelForCausalLM.from_pretrained(tmp_path), load_pretrained(tmp_path)):
        assert isinstance(loaded, CompressMamba3ForCausalLM)
        with torch.no_grad():
            assert torch.allclose(loaded.double()(ids).logits, m(ids).logits, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_mamba_ssm_folder_round_trip(tmp_path, variant):
    m = _model(*variant, sizes=(12, 12))
    export_mamba_ssm(m, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["ssm_cfg"]["layer"] == "Mamba3" and cfg["ssm_cfg"]["d_state"] == 12
    assert cfg["ssm_cfg"]["is_mimo"] == variant[0] and cfg["ssm_cfg"]["is_outproj_norm"] == variant[1]
    stored = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    assert "backbone.embedding.weight" in stored and "backbone.layers.1.mixer.B_bias" in stored
    back = load_pretrained(tmp_path).double()
    assert back.config.mamba_ssm_layout is False  # the layout flag is spent on the first load
    ids = torch.randint(0, 37, (2, 13))
    with torch.no_grad():
        assert torch.allclose(back(ids).logits, m(ids).logits, atol=1e-6)
    for k, v in mamba_ssm_state_dict(back).items():
        assert torch.equal(v.double(), stored[k].double()), k


def test_mamba_ssm_export_refuses_per_layer_sizes(tmp_path):
    m = _model(False, False, 0.5, sizes=(12, 8))
    with pytest.raises(ValueError, match=r"state_sizes \[12, 8\] and rope_angles \[3, 2\]"):
        export_mamba_ssm(m, tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="rope_fraction must be 0.5 or 1.0, got 0.25"):
        build_mamba3(d_model=16, n_layers=1, head_dim=8, rope_fraction=0.25)
    with pytest.raises(ValueError, match=r"rope_angles \[5\] must hold one S per layer"):
        build_mamba3(d_model=16, n_layers=1, head_dim=8, state_size=8, rope_angles=[5])


def test_convert_cli_writes_mamba_ssm_and_reads_it_back(tmp_path):
    from compressmamba.cli import main

    m = _model(True, False, 0.5, sizes=(12, 12)).float()
    m.save_pretrained(tmp_path / "ours")
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "ssm"), "--to", "mamba_ssm"]) == 0
    assert main(["convert", str(tmp_path / "ssm"), str(tmp_path / "back")]) == 0
    back = load_pretrained(tmp_path / "back")
    ids = torch.randint(0, 37, (2, 9))
    with torch.no_grad():
        assert torch.allclose(back(ids).logits, m(ids).logits, atol=1e-5)


def test_post_hoc_compress_cuts_modes_and_the_cut_model_reloads(tmp_path):
    from compressmamba.compress import compress_model

    m = _model(False, True, 0.5, sizes=(12, 10)).float()
    gen = torch.Generator().manual_seed(3)
    batches = [{"input_ids": torch.randint(0, 37, (2, 16), generator=gen)} for _ in range(2)]
    report = compress_model(m, batches, tau=0.2, method="hankel")
    assert report.old_sizes == [12, 10]  # coordinates (N) before and after, like every family
    assert [len(e) for e in report.energies] == [9, 8]  # one energy per mode: S pairs + N − 2S coordinates
    assert report.new_sizes == m.state_sizes and all(n < o for n, o in zip(m.state_sizes, (12, 10)))
    m.save_pretrained(tmp_path)
    back = load_pretrained(tmp_path)
    assert back.state_sizes == m.state_sizes and back.config.rope_angles == m.config.rope_angles


def test_classifier_over_mamba3_mixers_cuts():
    m = build_mamba3(d_model=16, n_layers=1, state_size=8, head_dim=8, n_classes=3, d_input=5)
    x, y = torch.randn(4, 12, 5), torch.tensor([0, 1, 2, 1])
    out = m(x, labels=y)
    assert out.logits.shape == (4, 3) and torch.isfinite(out.loss)
    out.loss.backward()
    layer = m.ssm_layers()[0]
    assert layer.in_proj.weight.grad is not None and layer.B_bias.grad.abs().sum() > 0
    layer.truncate_(torch.tensor([1, 3, 5]))  # S = 2: pair 1, then unturned coordinates 5 and 7
    assert m.state_sizes == [4] and torch.isfinite(m(x, labels=y).loss)
