"""What must hold on every transformers release we declare (compressmamba/compat.py): each test
guards a defect that one release or another showed (issue #10)."""

import torch
from safetensors.torch import load_file

from compressmamba.models.mamba import CompressMambaForCausalLM, build_mamba
from compressmamba.reduction import select_states
from compressmamba.training.config import OptimConfig
from compressmamba.training.optim import param_groups

from test_mamba import _hf


def _groups_by_name(model):
    names = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: sorted(names[id(p)] for p in g["params"]) for g in param_groups(model, OptimConfig())}


def _perturbed(model, seed=0):
    """Every parameter moved off its initial value, so a re-initialisation after loading shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _count_forward_tokens(model):
    seen = []
    model.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw["input_ids"].shape[1]), with_kwargs=True)
    return seen


def test_generation_feeds_one_token_per_step_after_the_prompt():
    model = build_mamba(d_model=16, n_layers=2, state_sizes=[6, 3], vocab_size=29).eval()
    seen = _count_forward_tokens(model)
    prompt = torch.randint(0, 29, (2, 5))
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert out.shape == (2, 11)
    assert seen == [5, 1, 1, 1, 1, 1]  # a lost cache re-reads the prefix: [5, 6, 7, ...]


def test_from_pretrained_returns_exactly_the_saved_tensors(tmp_path):
    ours = _perturbed(build_mamba(d_model=16, n_layers=3, state_sizes=[7, 2, 5], vocab_size=31))
    ours.save_pretrained(tmp_path / "ours")
    saved = load_file(tmp_path / "ours" / "model.safetensors")
    back = CompressMambaForCausalLM.from_pretrained(tmp_path / "ours")
    sd = back.state_dict()
    assert set(saved) <= set(sd)
    for k, v in saved.items():
        assert torch.equal(sd[k], v), k  # bitwise: no re-initialisation after loading
    hf = _perturbed(_hf(vocab=37, tie=False), seed=1)
    hf.save_pretrained(tmp_path / "hf")
    sd = CompressMambaForCausalLM.from_pretrained(tmp_path / "hf").state_dict()
    for k, v in hf.state_dict().items():
        assert torch.equal(sd[k], v), k


def test_optimizer_groups_of_a_loaded_model_equal_a_fresh_ones(tmp_path):
    fresh = build_mamba(d_model=16, n_layers=2, state_sizes=[4, 6], vocab_size=23)
    fresh.save_pretrained(tmp_path / "m")
    loaded = CompressMambaForCausalLM.from_pretrained(tmp_path / "m")
    groups = _groups_by_name(fresh)
    assert groups == _groups_by_name(loaded)
    assert "backbone.layers.1.mixer.A_log" in groups["ssm"]
    assert {"backbone.layers.0.mixer.D", "backbone.layers.0.mixer.dt_proj.bias"} <= set(groups["no_decay"])
    assert "backbone.layers.0.mixer.in_proj.weight" in groups["decay"]


def _tied(model) -> bool:
    return model.lm_head.weight.data_ptr() == model.backbone.embeddings.weight.data_ptr()


def test_tied_embeddings_stay_tied_after_load_and_after_a_cut(tmp_path):
    m = _perturbed(build_mamba(d_model=16, n_layers=2, state_sizes=[8, 8], vocab_size=19))
    assert _tied(m)
    m.save_pretrained(tmp_path / "a")
    loaded = CompressMambaForCausalLM.from_pretrained(tmp_path / "a")
    assert _tied(loaded)
    torch.testing.assert_close(loaded.lm_head.weight, m.backbone.embeddings.weight, rtol=0, atol=0)
    layer = loaded.ssm_layers()[0]
    layer.start_stats()
    with torch.no_grad():
        loaded(input_ids=torch.randint(0, 19, (2, 9)))
    layer.truncate_(select_states(layer.energy(layer.pop_stats(), "output"), 3))
    assert loaded.state_sizes == [3, 8] and _tied(loaded)
    loaded.save_pretrained(tmp_path / "b")
    again = CompressMambaForCausalLM.from_pretrained(tmp_path / "b")
    assert again.state_sizes == [3, 8] and _tied(again)
    untied = build_mamba(d_model=16, n_layers=1, state_size=4, vocab_size=19, tie_word_embeddings=False)
    untied.save_pretrained(tmp_path / "c")
    assert not _tied(CompressMambaForCausalLM.from_pretrained(tmp_path / "c"))
