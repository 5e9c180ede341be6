import pytest
import torch
from transformers import AutoModelForCausalLM, MambaConfig, MambaForCausalLM

from compressmamba.models.mamba import CompressMambaForCausalLM, build_mamba
from compressmamba.models.protocol import declared_parameter_names
from compressmamba.reduction import select_states


def _hf(vocab=37, conv_bias=True, tie=True, fp32res=True, layers=2, n=8, seed=0):
    torch.manual_seed(seed)
    cfg = MambaConfig(
        vocab_size=vocab,
        hidden_size=16,
        state_size=n,
        num_hidden_layers=layers,
        expand=2,
        conv_kernel=4,
        use_conv_bias=conv_bias,
        tie_word_embeddings=tie,
        residual_in_fp32=fp32res,
        time_step_rank=3,
    )
    m = MambaForCausalLM(cfg).eval()
    with torch.no_grad():  # make every parameter non-trivial (no zeros, no ones)
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


@pytest.mark.parametrize(
    "conv_bias,tie,fp32res,vocab", [(True, True, True, 37), (False, False, False, 50), (True, False, True, 64)]
)
def test_loads_transformers_checkpoint_with_equal_logits(tmp_path, conv_bias, tie, fp32res, vocab):
    hf = _hf(vocab, conv_bias, tie, fp32res)
    hf.save_pretrained(tmp_path / "hf")
    ours = CompressMambaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert ours.state_sizes == [8, 8]
    x = torch.randint(0, vocab, (2, 23))
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=x).logits, hf(input_ids=x).logits.float(), rtol=1e-4, atol=1e-4)


def _tiny(sizes=(16, 5, 9)):
    torch.manual_seed(1)
    return build_mamba(d_model=16, n_layers=len(sizes), state_sizes=list(sizes), vocab_size=41).eval()


def test_truncate_keep_all_is_identity_and_equals_zeroing():
    m = _tiny((12, 12))
    x = torch.randint(0, 41, (2, 19))
    with torch.no_grad():
        y0 = m(input_ids=x).logits
        assert m.ssm_layers()[0].truncate_(torch.arange(12)) == {}
        torch.testing.assert_close(m(input_ids=x).logits, y0)
        keep = torch.tensor([0, 3, 4, 10])
        mixer = m.ssm_layers()[1]
        drop = torch.tensor([i for i in range(12) if i not in keep.tolist()])
        r = mixer.dt_rank
        mixer.x_proj.weight[r + drop] = 0  # zero the B rows of the dropped states
        y_zero = m(input_ids=x).logits
        w_before = mixer.x_proj.weight.clone()
        maps = mixer.truncate_(keep)
        assert m.state_sizes == [12, 4] and m.config.state_sizes == [12, 4]
        torch.testing.assert_close(m(input_ids=x).logits, y_zero, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(y_zero, y0)
        moment = torch.randn_like(w_before)
        torch.testing.assert_close(maps["x_proj.weight"](moment)[r : r + 4], moment[r + keep])
        assert maps["A_log"](torch.randn(32, 12)).shape == (32, 4)
    assert "backbone.layers.1.mixer.A_log" in declared_parameter_names(m, "ssm_params")


def test_per_layer_sizes_round_trip_save_load(tmp_path):
    m = _tiny()
    x = torch.randint(0, 41, (1, 15))
    m.save_pretrained(tmp_path / "ours")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert isinstance(back, CompressMambaForCausalLM) and back.state_sizes == [16, 5, 9]
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=x).logits, m(input_ids=x).logits)


def test_energy_from_calibration_and_cut_through_protocol():
    m = _tiny((8, 8))
    x = torch.randint(0, 41, (4, 30))
    for layer in m.ssm_layers():
        layer.start_stats()
    with torch.no_grad():
        m(input_ids=x)
    for layer in m.ssm_layers():
        stats = layer.pop_stats()
        for method in ("hankel", "hankel_mean", "output"):
            e = layer.energy(stats, method)
            assert e.shape == (8,) and torch.isfinite(e).all() and (e > 0).all()
        layer.truncate_(select_states(layer.energy(stats, "output"), 3))
    assert m.state_sizes == [3, 3]
    out = m(input_ids=x, labels=x)
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_greedy_generate_matches_transformers_with_recurrent_cache(tmp_path):
    hf = _hf(vocab=37, n=6, seed=4)
    hf.save_pretrained(tmp_path / "hf")
    ours = CompressMambaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    prompt = torch.randint(0, 37, (2, 7))
    kw = dict(max_new_tokens=20, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        ref = hf.generate(prompt, **kw)
        got = ours.generate(prompt, **kw)
        nocache = ours.generate(prompt, use_cache=False, **kw)
    assert torch.equal(got, ref) and torch.equal(nocache, ref)


def test_decode_with_per_layer_sizes_equals_full_forward():
    from compressmamba.models.lm import RecurrentCache

    m = _tiny((16, 5, 9))
    x = torch.randint(0, 41, (2, 12))
    with torch.no_grad():
        full = m(input_ids=x).logits
        cache = RecurrentCache(3)
        first = m(input_ids=x[:, :5], cache_params=cache).logits
        steps = [m(input_ids=x[:, t : t + 1], cache_params=cache).logits for t in range(5, 12)]
    assert [s.shape[-1] for s in cache.ssm] == [16, 5, 9]
    torch.testing.assert_close(torch.cat([first, *steps], 1), full, rtol=1e-4, atol=1e-4)


def test_init_follows_mamba_ssm_and_declares_groups():
    torch.manual_seed(5)
    m = build_mamba(d_model=24, n_layers=3, state_sizes=[7, 3, 11], vocab_size=29)
    cfg = m.config
    for mixer, n in zip(m.ssm_layers(), [7, 3, 11]):
        dt = torch.nn.functional.softplus(mixer.dt_proj.bias.double())
        assert dt.min() >= cfg.time_step_min * (1 - 1e-5) and dt.max() <= cfg.time_step_max * (1 + 1e-5)
        assert dt.max() / dt.min() > 5  # log-uniform over two decades, not a constant
        torch.testing.assert_close(mixer.A_log, torch.log(torch.arange(1.0, n + 1)).expand(48, n))
        torch.testing.assert_close(mixer.D, torch.ones(48))
        bound = (1 / 48) ** 0.5 / 3**0.5  # kaiming-uniform bound 1/sqrt(fan_in), rescaled by sqrt(n_layers)
        w = mixer.out_proj.weight.abs().max()
        assert 0.8 * bound < w <= bound
    pre = "backbone.layers.0.mixer."
    assert declared_parameter_names(m, "ssm_params") >= {pre + "A_log"}
    no_decay = declared_parameter_names(m, "no_weight_decay_params")
    assert {pre + "A_log", pre + "D", pre + "dt_proj.bias"} <= no_decay and pre + "in_proj.weight" not in no_decay
    with pytest.raises(ValueError, match=r"keep must hold distinct indices in \[0, 3\), got \[0, 3\]"):
        m.ssm_layers()[1].truncate_(torch.tensor([0, 3]))


def test_mamba_classifier_for_images_and_tokens_cuts_and_trains():
    from compressmamba.models.mamba import MambaClassifier

    torch.manual_seed(0)
    img = build_mamba(d_model=16, n_layers=2, state_size=10, n_classes=10, d_input=3)
    tok = build_mamba(d_model=16, n_layers=1, state_size=10, n_classes=2, vocab_size=30)
    assert isinstance(img, MambaClassifier) and isinstance(tok, MambaClassifier)
    x, y = torch.randn(4, 21, 3), torch.randint(0, 10, (4,))
    out = img(inputs=x, labels=y)
    assert out.logits.shape == (4, 10) and torch.isfinite(out.loss)
    ids, lengths = torch.randint(0, 30, (3, 17)), torch.tensor([17, 9, 2])
    a = tok(inputs=ids, lengths=lengths).logits
    ids2 = ids.clone()
    ids2[2, 2:] = (ids2[2, 2:] + 1) % 30  # padding beyond the length does not change the pooled result
    torch.testing.assert_close(tok(inputs=ids2, lengths=lengths).logits[2], a[2])
    for layer in img.ssm_layers():
        layer.start_stats()
    with torch.no_grad():
        img(inputs=x)
    for layer in img.ssm_layers():
        layer.truncate_(select_states(layer.energy(layer.pop_stats(), "output"), 4))
    assert img.state_sizes == [4, 4]
    img(inputs=x, labels=y).loss.backward()
    with pytest.raises(ValueError, match="dual-encoder"):
        build_mamba(n_classes=2, vocab_size=30, pair=True)
