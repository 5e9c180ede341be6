"""transformers' hybrid families (Bamba, Granite 4.0-H, Zamba2, Nemotron-H) with compressmamba's
per-layer-N Mamba-2 mixers: parity with the stock model before any cut (logits, greedy
generation), cuts through the protocol, and the three saved forms: ours (per-layer N,
AutoModelForCausalLM after ``import compressmamba``), the stock family zero-padded to the
original N, and a uniform N written as a stock config."""

import copy
import json

import pytest
import torch
import transformers

from compressmamba.models import hybrid
from compressmamba.models.loading import load_pretrained
from compressmamba.models.protocol import declared_parameter_names

from hybrid_configs import tiny_config

FAMILIES = sorted(hybrid.HYBRIDS)


def _skip_unless_available(model_type):
    why = hybrid.available(model_type)
    if why:
        pytest.skip(why)


def _stock(model_type, seed=0, vocab_size=97, **overrides):
    """A random stock model whose SSM parameters are perturbed off their constant initial values
    (every head and channel different)."""
    _skip_unless_available(model_type)
    torch.manual_seed(seed)
    fields = {**tiny_config(model_type, vocab_size), **overrides}
    fields.pop("model_type")
    h = hybrid.HYBRIDS[model_type]
    model = getattr(transformers, h.causal_lm)(getattr(transformers, h.config)(**fields)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ("dt_bias", "A_log", "conv1d")) or name.endswith(".D"):
                p.add_(0.3 * torch.randn_like(p))
    return model


def _ids(seed=1, batch=2, length=21):
    return torch.randint(1, 97, (batch, length), generator=torch.Generator().manual_seed(seed))


def _keep(m, r, g):
    """Random r of the layer's states: one row per group (Mamba-2), or one set (Mamba-1)."""
    if not hasattr(m, "n_groups"):
        return torch.randperm(m.state_size, generator=g)[:r]
    return torch.stack([torch.randperm(m.state_size, generator=g)[:r] for _ in range(m.n_groups)])


def _random_cut(model, seed=0):
    """Cut layer i of ``model`` to a different size per layer, keeping random states of each group."""
    g = torch.Generator().manual_seed(seed)
    for i, m in enumerate(model.ssm_layers()):
        m.truncate_(_keep(m, m.state_size - 3 - 2 * i, g))
    return model


@pytest.mark.parametrize("model_type", FAMILIES)
def test_logits_equal_the_stock_model_before_any_cut(model_type):
    # float32: both mixers compute Δ and A in float32 whatever the parameters' dtype
    stock = _stock(model_type)
    ours = hybrid.from_stock(copy.deepcopy(stock))
    assert type(ours).__name__.startswith("Compress") and isinstance(ours, type(stock))
    assert len(ours.ssm_layers()) == sum(1 for m in stock.modules() if hybrid.is_stock_mixer(m)) >= 2
    ids = _ids()
    with torch.no_grad():
        want, got = stock(ids).logits, ours(ids).logits
    assert want.abs().max() > 1e-2
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_greedy_generation_equals_the_stock_model(model_type):
    stock = _stock(model_type)
    ours = hybrid.from_stock(copy.deepcopy(stock))
    ids = _ids(length=7)
    want = stock.generate(ids, max_new_tokens=9, do_sample=False)
    got = ours.generate(ids, max_new_tokens=9, do_sample=False)
    assert torch.equal(got, want)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_cut_model_saves_per_layer_sizes_and_auto_loads_it(model_type, tmp_path):
    """(a) ours: per-layer N, loaded by AutoModelForCausalLM; the cut model's cached generation
    equals its full forward pass (the cache holds each layer's own N)."""
    ours = _random_cut(hybrid.from_stock(_stock(model_type)))
    sizes = ours.state_sizes
    assert len(set(sizes)) == len(sizes)
    ours.save_pretrained(tmp_path / "ours")
    cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert cfg["model_type"] == "compressmamba_" + model_type and cfg["state_sizes"] == sizes
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert type(back) is type(ours) and back.state_sizes == sizes
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, ours(ids).logits, rtol=0, atol=0)
        assert torch.equal(load_pretrained(tmp_path / "ours")(ids).logits, ours(ids).logits)
    back.generation_config.eos_token_id = None  # six tokens each, compared with one full pass
    out = back.generate(ids[:, :6], max_new_tokens=6, do_sample=False)
    with torch.no_grad():
        full = back(out).logits
    assert torch.equal(full[:, 5:-1].argmax(-1), out[:, 6:])


@pytest.mark.parametrize("model_type", FAMILIES)
def test_padded_export_loads_in_plain_transformers_with_equal_outputs(model_type, tmp_path):
    """(b) the stock family at the original N, each cut layer zero-padded inside its groups; the
    original config.json with only the state field (here unchanged) as it was."""
    stock = _stock(model_type)
    original = stock.config.to_dict()
    ours = _random_cut(hybrid.from_stock(stock, original_config=original))
    hybrid.export_stock(ours, tmp_path / "stock")
    cfg = json.loads((tmp_path / "stock" / "config.json").read_text())
    assert cfg == json.loads(json.dumps({**original, "model_type": model_type}))
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "stock").eval()
    assert type(plain).__name__ == hybrid.HYBRIDS[model_type].causal_lm
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, ours(ids).logits, rtol=1e-5, atol=1e-5)
    want = plain.generate(ids[:, :7], max_new_tokens=8, do_sample=False)
    assert torch.equal(ours.generate(ids[:, :7], max_new_tokens=8, do_sample=False), want)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_uniform_export_is_a_stock_config_with_the_smaller_n(model_type, tmp_path):
    """(c) every SSM layer at one N: a stock config whose state field is that N, nothing padded.
    Jamba's B and C norms average over N, so their weights are rescaled: exact but for the norms'
    eps (0 here); Falcon-Mamba's norms have no weights, and its uniform export is refused."""
    ours = hybrid.from_stock(_stock(model_type, **({"rms_norm_eps": 0.0} if model_type == "jamba" else {})))
    g = torch.Generator().manual_seed(3)
    for m in ours.ssm_layers():
        m.truncate_(_keep(m, 5, g))
    if model_type == "falcon_mamba":
        with pytest.raises(ValueError, match="has no weights"):
            hybrid.export_stock(ours, tmp_path / "uniform", uniform=True)
        return
    hybrid.export_stock(ours, tmp_path / "uniform", uniform=True)
    cfg = json.loads((tmp_path / "uniform" / "config.json").read_text())
    assert cfg[hybrid.HYBRIDS[model_type].state_field] == 5
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "uniform").eval()
    assert all(m.ssm_state_size == 5 for m in plain.modules() if hybrid.is_stock_mixer(m))
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, ours(ids).logits, rtol=1e-5, atol=1e-5)
    ours.ssm_layers()[0].truncate_(_keep(ours.ssm_layers()[0], 4, g))
    with pytest.raises(ValueError, match="uniform export needs one state size"):
        hybrid.export_stock(ours, tmp_path / "bad", uniform=True)


def test_balanced_cut_saves_its_projection_and_reloads(tmp_path):
    """Mamba-2 ``balanced`` on a hybrid: the layer gains bc_proj; ours saves and reloads it (the
    stock export refuses, naming the format that holds it)."""
    model_type = "granitemoehybrid"
    ours = hybrid.from_stock(_stock(model_type))
    ids = _ids(batch=4, length=24)
    for m in ours.ssm_layers():
        m.start_stats()
    with torch.no_grad():
        ours(ids)
    for m in ours.ssm_layers():
        m.energy(m.pop_stats(), "balanced")
        m.truncate_(torch.arange(4).expand(m.n_groups, -1))
    ours.save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["bc_proj_in"] == [12, 12]
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert back.state_sizes == [4, 4] and back.ssm_layers()[0].bc_proj.B.shape == (2, 4, 12)
    with torch.no_grad():
        assert torch.equal(back(ids).logits, ours(ids).logits)
    with pytest.raises(ValueError, match="balanced state projection"):
        hybrid.export_stock(ours, tmp_path / "stock")


@pytest.mark.parametrize("model_type", ["bamba", "nemotron_h"])
def test_a_stock_folder_loads_as_our_model_with_declared_no_decay_names(model_type, tmp_path):
    stock = _stock(model_type)
    stock.save_pretrained(tmp_path / "stock")
    ours = load_pretrained(tmp_path / "stock")
    assert type(ours).__name__ == "Compress" + hybrid.HYBRIDS[model_type].causal_lm
    assert ours.state_sizes == [12, 12] and ours.config.state_sizes == [12, 12]
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, stock(ids).logits, rtol=1e-5, atol=1e-5)
    names = declared_parameter_names(ours, "no_weight_decay_params")
    want = {n for n, _ in ours.named_parameters() if n.rsplit(".", 1)[-1] in ("A_log", "D", "dt_bias")}
    assert names == want and len(want) == 3 * len(ours.ssm_layers())


def test_unavailable_family_names_the_transformers_version(monkeypatch):
    # the module object hybrid.py reads: transformers 5.25 swaps sys.modules["transformers"] for a new lazy
    # module when some model classes are first imported, so the test's own `transformers` may be another one
    monkeypatch.setattr(hybrid.transformers, "__version__", "5.20.1")  # before the per-layer recurrent cache
    why = hybrid.available("bamba")
    assert why is not None and ">= 5.21" in why and "installed: 5.20.1" in why
    with pytest.raises(ImportError, match="needs transformers >= 5.21"):
        hybrid.build_hybrid(config=tiny_config("bamba"))


def test_balanced_is_refused_at_validation_for_mamba1_mixer_hybrids(tmp_path):
    """Jamba and Falcon-Mamba have Mamba-1 mixers (per-channel A): balanced is refused when the
    recipe is read, not when the first cut runs; the Mamba-2 hybrids accept it."""
    from compressmamba.training.config import recipe_from_dict

    def recipe(model_type, method):
        return {
            "model": {"name": "hybrid", "config": {"model_type": model_type, "hidden_size": 8}},
            "data": {"name": "mqar", "vocab_size": 64, "seq_len": 16, "n_pairs": 2, "n_train": 8, "n_val": 4},
            "train": {"steps": 4, "batch_size": 2},
            "reduction": {"mode": "fixed", "fraction": 0.5, "attempts": [2], "method": method},
            "out_dir": str(tmp_path / model_type),
        }

    for mtype in ("jamba", "falcon_mamba", "compressmamba_jamba"):
        with pytest.raises(ValueError, match=r"reduction.method = 'balanced'.*\['hankel', 'hankel_mean', 'output'\]"):
            recipe_from_dict(recipe(mtype, "balanced"))
        assert recipe_from_dict(recipe(mtype, "output")).reduction.method == "output"
    assert recipe_from_dict(recipe("bamba", "balanced")).reduction.method == "balanced"


def test_builder_refuses_bad_arguments():
    with pytest.raises(ValueError, match="exactly one of model.pretrained"):
        hybrid.build_hybrid()
    with pytest.raises(ValueError, match="model.config.model_type = 'mamba'"):
        hybrid.build_hybrid(config={"model_type": "mamba"})
    if hybrid.available("bamba") is None:  # transformers' own field check, in one line naming the field
        with pytest.raises(ValueError, match="model.config does not make a BambaConfig: .*mamba_d_state"):
            hybrid.build_hybrid(config={**tiny_config("bamba"), "mamba_d_state": "abc"})


def test_falcon_h1_without_its_gated_norm_equals_stock():
    """Falcon-H1 with ``mamba_rms_norm: false``: y · SiLU(z), no norm weights to carry."""
    _skip_unless_available("falcon_h1")
    fields = tiny_config("falcon_h1")
    fields.pop("model_type")
    torch.manual_seed(0)
    stock = transformers.FalconH1ForCausalLM(transformers.FalconH1Config(**fields, mamba_rms_norm=False)).eval()
    ours = hybrid.from_stock(copy.deepcopy(stock))
    assert all(m.norm is None for m in ours.ssm_layers())
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, stock(ids).logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_type", ["granitemoehybrid", "jamba"])
def test_left_padded_batch_generates_as_the_stock_model(model_type):
    """Padded positions are masked before the mixer's projection and after its conv, as the
    stock mixer masks them: a left-padded batch generates the stock model's tokens."""
    stock = _stock(model_type)
    ours = hybrid.from_stock(copy.deepcopy(stock))
    ids = _ids(length=9)
    mask = torch.ones_like(ids)
    ids[0, :4], mask[0, :4] = 0, 0  # the first row is a shorter prompt, padded on the left
    want = stock.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert torch.equal(got, want)
    with torch.no_grad():
        torch.testing.assert_close(
            ours(ids, attention_mask=mask).logits, stock(ids, attention_mask=mask).logits, rtol=1e-5, atol=1e-6
        )
