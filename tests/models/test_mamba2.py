"""Mamba-2 with per-layer state sizes: transformers parity, checkpoints, decoding, exact cuts."""

import json

import pytest
import torch
from packaging.version import Version
from transformers import Mamba2Config, Mamba2ForCausalLM

from compressmamba import compat
from compressmamba.models import CompressMamba2ForCausalLM, CompressMambaForCausalLM, build_mamba2, load_pretrained
from compressmamba.models.loading import export_transformers
from compressmamba.models.protocol import declared_parameter_names
from compressmamba.reduction import select_states


def _gated_norm_is_per_group() -> bool:
    """Feature-detected through behaviour (no private transformers name): whether the gated
    RMSNorm of transformers' Mamba2 mixer normalises each group of channels on its own (mamba-ssm's
    math, ours: 5.23 and newer) or all channels at once (4.57, 5.0)."""
    torch.manual_seed(0)
    cfg = Mamba2Config(vocab_size=11, hidden_size=16, state_size=4, num_hidden_layers=1, num_heads=4,
                       head_dim=8, expand=2, n_groups=2, chunk_size=8)
    norm = Mamba2ForCausalLM(cfg).backbone.layers[0].mixer.norm
    x, z = torch.randn(1, 3, 32), torch.randn(1, 3, 32)
    with torch.no_grad():
        got = norm(x, z)
    g = (x * torch.nn.functional.silu(z)).view(1, 3, 2, 16)
    per_group = (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)).view(1, 3, 32)
    return torch.allclose(got, norm.weight * per_group, atol=1e-5)


def _transformers_matches(groups: int) -> bool:
    """Whether transformers' Mamba2 torch path computes mamba-ssm's math (ours): from 4.57 with one
    group (4.45 differs); with several groups only where its gated RMSNorm normalises per group."""
    return compat.TRANSFORMERS >= Version("4.57") and (groups == 1 or _gated_norm_is_per_group())


def _parity(groups: int):
    return pytest.mark.skipif(not _transformers_matches(groups), reason="transformers' Mamba2 differs here")


def _hf2(vocab=37, groups=2, n=12, tie=False, layers=2, seed=0, chunk=8):
    torch.manual_seed(seed)
    cfg = Mamba2Config(
        vocab_size=vocab,
        hidden_size=32,
        state_size=n,
        num_hidden_layers=layers,
        num_heads=4,
        head_dim=16,
        expand=2,
        n_groups=groups,
        chunk_size=chunk,
        tie_word_embeddings=tie,
        conv_kernel=4,
    )
    m = Mamba2ForCausalLM(cfg).eval()
    with torch.no_grad():  # every parameter non-trivial (no zeros, no ones)
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def _tiny2(sizes=(13, 5, 9), groups=2, seed=1):
    torch.manual_seed(seed)
    m = build_mamba2(
        d_model=32,
        n_layers=len(sizes),
        state_sizes=list(sizes),
        vocab_size=41,
        head_dim=16,
        n_groups=groups,
        chunk_size=8,
    ).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


@pytest.mark.parametrize(
    "groups,tie,length",
    [pytest.param(g, t, n, marks=_parity(g)) for g, t, n in [(2, False, 23), (1, True, 16), (4, False, 9)]],
)
def test_logits_equal_transformers_mamba2(tmp_path, groups, tie, length):
    if tie and not compat.MAMBA2_SAVES_TIED:
        pytest.skip("transformers 4.x cannot save a tied Mamba2ForCausalLM")
    hf = _hf2(groups=groups, tie=tie)
    hf.save_pretrained(tmp_path / "hf")
    ours = CompressMamba2ForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert ours.state_sizes == [12, 12] and ours.config.n_groups == groups
    x = torch.randint(0, 37, (2, length))
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=x).logits, hf(input_ids=x).logits.float(), rtol=1e-4, atol=1e-4)


@_parity(2)
def test_greedy_generate_matches_transformers_one_token_per_step(tmp_path):
    hf = _hf2(groups=2, seed=3)
    hf.save_pretrained(tmp_path / "hf")
    ours = CompressMamba2ForCausalLM.from_pretrained(tmp_path / "hf").eval()
    seen = []
    ours.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape[1]), with_kwargs=True)
    prompt = torch.randint(0, 36, (2, 7))  # never the pad id: transformers would mask it
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=36, eos_token_id=None)
    with torch.no_grad():
        ref = hf.generate(prompt, use_cache=False, **kw)
        got = ours.generate(prompt, **kw)
    assert torch.equal(got, ref)
    assert seen == [7] + [1] * 11


def test_decode_with_per_layer_sizes_equals_full_forward():
    m = _tiny2((13, 5, 9))
    x = torch.randint(0, 41, (2, 14))
    with torch.no_grad():
        full = m(input_ids=x).logits
        cache = m.prepare_inputs_for_generation(x)[compat.CACHE_NAME]
        first = m(input_ids=x[:, :5], cache=cache).logits
        steps = [m(input_ids=x[:, t : t + 1], cache=cache).logits for t in range(5, 14)]
    assert [s.shape for s in cache.ssm] == [(2, 4, 16, 13), (2, 4, 16, 5), (2, 4, 16, 9)]
    torch.testing.assert_close(torch.cat([first, *steps], 1), full, rtol=1e-4, atol=1e-4)


def test_truncate_keep_all_is_identity_and_equals_zeroing_per_group():
    m = _tiny2((13, 11), groups=2)
    x = torch.randint(0, 41, (2, 19))
    mixer = m.ssm_layers()[1]
    with torch.no_grad():
        y0 = m(input_ids=x).logits
        assert mixer.truncate_(torch.arange(11).expand(2, 11)) == {}
        torch.testing.assert_close(m(input_ids=x).logits, y0, rtol=0, atol=0)
        keep = torch.tensor([[0, 3, 4, 10], [1, 2, 7, 9]])  # other states in each group
        di, n = mixer.d_inner, 11
        for g in range(2):  # zero the dropped states' B channels (conv weight and bias): B = SiLU(0) = 0
            drop = [k for k in range(n) if k not in keep[g].tolist()]
            ch = [di + g * n + k for k in drop]
            mixer.conv1d.weight[ch] = 0
            mixer.conv1d.bias[ch] = 0
        y_zero = m(input_ids=x).logits
        w_before = mixer.in_proj.weight.clone()
        maps = mixer.truncate_(keep)
        assert m.state_sizes == [13, 4] and m.config.state_sizes == [13, 4]
        torch.testing.assert_close(m(input_ids=x).logits, y_zero, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(y_zero, y0)
    moment = torch.randn_like(w_before)
    rows = 2 * di + n + keep[1]  # group 1's B rows of in_proj
    torch.testing.assert_close(maps["in_proj.weight"](moment)[2 * di + 4 : 2 * di + 8], moment[rows])
    assert set(maps) == {"in_proj.weight", "conv1d.weight", "conv1d.bias"}
    assert mixer.conv1d.weight.shape[0] == di + 2 * 2 * 4 and mixer.in_proj.weight.shape[0] == 2 * di + 16 + 4
    assert "backbone.layers.1.mixer.A_log" in declared_parameter_names(m, "ssm_params")
    with pytest.raises(ValueError, match=r"keep must be \(2, r\) distinct state indices in \[0, 4\)"):
        mixer.truncate_(torch.tensor([[0, 1], [0, 4]]))
    with pytest.raises(ValueError, match=r"keep must be \(2, r\)"):
        mixer.truncate_(torch.tensor([0, 1]))


def test_energy_per_group_from_calibration_and_cut_through_protocol():
    m = _tiny2((12, 12), groups=2)
    layers = m.ssm_layers()
    for layer in layers:
        layer.start_stats()
    with torch.no_grad():
        m(input_ids=torch.randint(0, 41, (3, 20)))
    stats = [layer.pop_stats() for layer in layers]
    for method in ("output", "hankel", "hankel_mean"):
        e = layers[0].energy(stats[0], method)
        assert e.shape == (2, 12) and e.dtype == torch.float64 and (e > 0).all()
    e = layers[0].energy(stats[0], "output")
    keep = torch.stack([select_states(row, 5) for row in e])
    layers[0].truncate_(keep)
    assert m.state_sizes == [5, 12]
    x = torch.randint(0, 41, (2, 9))
    m(input_ids=x, labels=x).loss.backward()


def test_output_energy_is_the_exact_output_energy_of_each_mode():
    """Removing state n of group g changes the SSD output by exactly C_t[n] h_t[., ., n]: summing
    that contribution's square over tokens and channels (float64, from the reference scan's
    states) gives the `output` energy."""
    from compressmamba.kernels import ssd_scan_ref

    m = _tiny2((7,), groups=2).double()
    mixer = m.ssm_layers()[0]
    ids = torch.randint(0, 41, (2, 11))
    captured = {}

    def grab(mod, args, kw, out):
        captured["xBC"] = out

    mixer.start_stats()
    with torch.no_grad():
        h = m.backbone.layers[0].norm(m.backbone.embeddings(ids))
        m(input_ids=ids)
        z, xBC, dt = mixer._split(mixer.in_proj(h))
        from compressmamba.kernels import causal_conv1d_ref

        xBC = causal_conv1d_ref(xBC.transpose(1, 2), mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias, "silu")
        x, B, C, delta = mixer._ssm_args(xBC.transpose(1, 2), dt)
        A = -torch.exp(mixer.A_log)
        e = mixer.energy(mixer.pop_stats(), "output")
        want = torch.zeros(2, 7, dtype=torch.float64)
        for g in range(2):
            for k in range(7):
                Bk = torch.zeros_like(B)
                Bk[:, :, g, k] = B[:, :, g, k]
                yk = ssd_scan_ref(x, delta, A, Bk, C, 8)  # the output of mode (g, k) alone
                want[g, k] = (yk**2).sum()
    torch.testing.assert_close(e * 22, want, rtol=1e-6, atol=1e-10)


def test_mamba_ssm_layout_loads_and_type_dispatch(tmp_path):
    hf = _hf2(vocab=37, groups=1, tie=True, seed=5)
    sd = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in hf.state_dict().items()}
    emb = sd["backbone.embedding.weight"]
    sd["backbone.embedding.weight"] = torch.cat([emb, torch.randn(3, emb.shape[1])])  # padded to 40
    sd["lm_head.weight"] = sd["backbone.embedding.weight"]
    root = tmp_path / "ssm"
    root.mkdir()
    torch.save(sd, root / "pytorch_model.bin")
    cfg = {
        "d_model": 32,
        "n_layer": 2,
        "vocab_size": 37,
        "pad_vocab_size_multiple": 8,
        "tie_embeddings": True,
        "ssm_cfg": {"layer": "Mamba2", "d_state": 12, "headdim": 16, "ngroups": 1, "chunk_size": 8},
    }
    (root / "config.json").write_text(json.dumps(cfg))
    ours = load_pretrained(root)
    assert isinstance(ours, CompressMamba2ForCausalLM) and ours.config.vocab_size == 40
    x = torch.randint(0, 37, (2, 11))
    if _transformers_matches(1):
        with torch.no_grad():
            ref = hf(input_ids=x).logits
            torch.testing.assert_close(ours(input_ids=x).logits[..., :37], ref, rtol=1e-4, atol=1e-4)
    _hf2(tie=False).save_pretrained(tmp_path / "hf")  # (4.x cannot save a tied Mamba2ForCausalLM)
    assert isinstance(load_pretrained(tmp_path / "hf"), CompressMamba2ForCausalLM)
    with pytest.raises(ValueError, match="is a CompressMamba2ForCausalLM checkpoint.*load it with"):
        CompressMambaForCausalLM.from_pretrained(tmp_path / "hf")
    cfg["ssm_cfg"]["D_has_hdim"] = True
    (root / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"ssm_cfg.D_has_hdim=True is not supported"):
        load_pretrained(root)
    bad = dict(sd)
    del bad["backbone.layers.1.mixer.dt_bias"]
    bad["backbone.layers.0.mixer.in_proj.weight"] = torch.randn(5, 32)
    del cfg["ssm_cfg"]["D_has_hdim"]
    (root / "config.json").write_text(json.dumps(cfg))
    torch.save(bad, root / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"missing keys \['backbone.layers.1.mixer.dt_bias'\].*in_proj.weight: found"):
        load_pretrained(root)


def test_export_pads_per_layer_sizes_into_plain_transformers_and_round_trips(tmp_path):
    m = _tiny2((13, 5, 9), groups=2)
    x = torch.randint(0, 41, (2, 17))
    out = export_transformers(m, tmp_path / "hf")
    hf = Mamba2ForCausalLM.from_pretrained(out).eval()
    assert hf.config.state_size == 13
    with torch.no_grad():
        ref = m(input_ids=x).logits
        if _transformers_matches(2):
            torch.testing.assert_close(hf(input_ids=x).logits.float(), ref, rtol=1e-4, atol=1e-4)
        back = load_pretrained(out).eval()
        assert back.state_sizes == [13, 13, 13]
        torch.testing.assert_close(back(input_ids=x).logits, ref, rtol=1e-4, atol=1e-4)
    m.save_pretrained(tmp_path / "ours")
    again = load_pretrained(tmp_path / "ours")
    assert isinstance(again, CompressMamba2ForCausalLM) and again.state_sizes == [13, 5, 9]
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=x).logits, m(input_ids=x).logits, rtol=0, atol=0)


def test_config_checks_heads_and_groups():
    with pytest.raises(ValueError, match=r"num_heads \* head_dim \(3 \* 16\) must equal expand \* hidden_size \(64\)"):
        build_mamba2(d_model=32, n_layers=1, head_dim=16).config.__class__(hidden_size=32, num_heads=3, head_dim=16)
    with pytest.raises(ValueError, match="n_groups=3 must be >= 1 and divide num_heads=4"):
        build_mamba2(d_model=32, n_layers=1, head_dim=16, n_groups=3)
