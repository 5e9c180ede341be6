import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, MambaForCausalLM

from compressmamba.models.loading import export_transformers, load_pretrained
from compressmamba.models.mamba import CompressMambaConfig, CompressMambaForCausalLM, build_mamba

from test_mamba import _hf


def test_mamba_ssm_layout_loads_the_same(tmp_path):
    hf = _hf(vocab=37, tie=True)  # vocab 37 → mamba-ssm pads to 40
    sd = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in hf.state_dict().items()}
    emb = sd["backbone.embedding.weight"]
    sd["backbone.embedding.weight"] = torch.cat([emb, torch.randn(3, emb.shape[1])])
    sd["lm_head.weight"] = sd["backbone.embedding.weight"]
    root = tmp_path / "ssm"
    root.mkdir()
    torch.save(sd, root / "pytorch_model.bin")
    cfg = {
        "d_model": 16,
        "n_layer": 2,
        "vocab_size": 37,
        "pad_vocab_size_multiple": 8,
        "tie_embeddings": True,
        "residual_in_fp32": True,
        "ssm_cfg": {"d_state": 8, "dt_rank": 3},
    }
    (root / "config.json").write_text(json.dumps(cfg))
    ours = CompressMambaForCausalLM.from_pretrained(root)
    assert ours.config.vocab_size == 40 and ours.state_sizes == [8, 8]
    x = torch.randint(0, 37, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=x).logits[..., :37], hf(input_ids=x).logits, rtol=1e-4, atol=1e-4)
    bad = dict(sd)
    bad["backbone.layers.0.mixer.A_log"] = torch.randn(32, 5)
    del bad["backbone.layers.1.mixer.D"]
    torch.save(bad, root / "pytorch_model.bin")
    with pytest.raises(
        ValueError, match=r"missing keys \['backbone.layers.1.mixer.D'\].*A_log: found \(32, 5\), expected \(32, 8\)"
    ):
        load_pretrained(root)


def test_export_pads_per_layer_sizes_and_loads_in_plain_transformers(tmp_path):
    torch.manual_seed(3)
    m = build_mamba(d_model=16, n_layers=3, state_sizes=[16, 5, 9], vocab_size=41).eval()
    x = torch.randint(0, 41, (2, 13))
    out = export_transformers(m, tmp_path / "hf")
    hf = MambaForCausalLM.from_pretrained(out).eval()
    assert hf.config.state_size == 16
    back = load_pretrained(out)
    assert back.state_sizes == [16, 16, 16]
    with torch.no_grad():
        ref = m(input_ids=x).logits
        torch.testing.assert_close(hf(input_ids=x).logits.float(), ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(back(input_ids=x).logits, ref, rtol=1e-4, atol=1e-4)


def test_unknown_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="unknown model type 'llama'"):
        load_pretrained(tmp_path)


def _rewrite(root, edit_sd=None, edit_cfg=None):
    from safetensors.torch import load_file, save_file

    if edit_sd:
        sd = load_file(root / "model.safetensors")
        edit_sd(sd)
        save_file(sd, root / "model.safetensors", metadata={"format": "pt"})
    if edit_cfg:
        cfg = json.loads((root / "config.json").read_text())
        edit_cfg(cfg)
        (root / "config.json").write_text(json.dumps(cfg))


def test_bad_transformers_checkpoint_names_key_and_shapes(tmp_path):
    hf = _hf(vocab=37, tie=False, n=8)
    for name in ("shape", "missing", "unexpected"):
        hf.save_pretrained(tmp_path / name)
    _rewrite(tmp_path / "shape", edit_cfg=lambda c: c.update(state_size=6))
    with pytest.raises(ValueError, match=r"backbone.layers.0.mixer.A_log: found \(32, 8\), expected \(32, 6\)"):
        CompressMambaForCausalLM.from_pretrained(tmp_path / "shape")
    _rewrite(tmp_path / "missing", edit_sd=lambda sd: sd.pop("lm_head.weight"))
    with pytest.raises(ValueError, match=r"missing keys \['lm_head.weight'\]"):
        CompressMambaForCausalLM.from_pretrained(tmp_path / "missing")
    _rewrite(tmp_path / "unexpected", edit_sd=lambda sd: sd.update({"backbone.layers.0.mixer.E": torch.ones(3)}))
    with pytest.raises(ValueError, match=r"unexpected keys \['backbone.layers.0.mixer.E'\]"):
        AutoModelForCausalLM.from_pretrained(
            tmp_path / "unexpected", config=CompressMambaConfig.from_pretrained(tmp_path / "unexpected")
        )
    _rewrite(tmp_path / "missing", edit_cfg=lambda c: c.update(model_type="llama"))
    with pytest.raises(ValueError, match="unknown model type 'llama'"):
        CompressMambaForCausalLM.from_pretrained(tmp_path / "missing")
    _rewrite(tmp_path / "missing", edit_cfg=lambda c: c.update(model_type="jamba"))  # a family, not this class
    with pytest.raises(ValueError, match="is a jamba checkpoint; load it with compressmamba.models.load_pretrained"):
        CompressMambaForCausalLM.from_pretrained(tmp_path / "missing")


def test_config_takes_mamba_ssm_names_and_pads_vocabulary(tmp_path):
    c = CompressMambaConfig(d_model=24, n_layer=3, vocab_size=37, pad_vocab_size_multiple=8, dt_rank=5, conv_bias=False)
    assert (c.hidden_size, c.num_hidden_layers, c.vocab_size, c.intermediate_size) == (24, 3, 40, 48)
    assert (c.time_step_rank, c.use_conv_bias, c.d_model, c.state_sizes) == (5, False, 24, [16, 16, 16])
    c.save_pretrained(tmp_path)
    assert CompressMambaConfig.from_pretrained(tmp_path).to_dict() == c.to_dict()
    m = build_mamba(d_model=16, n_layers=2, state_size=[4, 7], vocab_size=37, pad_vocab_size_multiple=8, seq_len=64)
    assert m.config.vocab_size == 40 and m.state_sizes == [4, 7] and m.lm_head.weight.shape == (40, 16)
    with pytest.raises(ValueError, match="state_sizes"):
        build_mamba(d_model=16, n_layers=3, state_sizes=[4, 7])


@pytest.mark.slow
def test_compress_and_convert_commands(tmp_path):
    torch.manual_seed(0)
    m = build_mamba(d_model=16, n_layers=2, state_size=12, vocab_size=256)
    m.save_pretrained(tmp_path / "src")
    run = [sys.executable, "-m", "compressmamba"]
    res = subprocess.run(
        run
        + [
            "compress",
            str(tmp_path / "src"),
            "--tau",
            "0.3",
            "--seq-len",
            "32",
            "--calib-batches",
            "2",
            "--out",
            str(tmp_path / "small"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    small = load_pretrained(tmp_path / "small")
    assert max(small.state_sizes) < 12 and "energy kept" in res.stdout
    res = subprocess.run(
        run + ["convert", str(tmp_path / "small"), str(tmp_path / "hf"), "--to", "transformers"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert MambaForCausalLM.from_pretrained(tmp_path / "hf").config.state_size == max(small.state_sizes)
    res = subprocess.run(
        run
        + [
            "compress",
            str(tmp_path / "src"),
            "--tau",
            "1.5",
            "--out",
            str(tmp_path / "x"),
            "--seq-len",
            "32",
            "--calib-batches",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2 and "tau" in res.stderr
