"""Loading Mamba checkpoints of three layouts, and exporting to plain transformers.

* ours (``model_type: compressmamba``, per-layer ``state_sizes``) and transformers'
  ``MambaForCausalLM`` (``model_type: mamba``, e.g. state-spaces/mamba-130m-hf): same weight
  names, loaded by ``CompressMambaForCausalLM.from_pretrained``;
* mamba-ssm's ``MambaLMHeadModel`` (config.json with ``d_model``/``n_layer``/``ssm_cfg`` and
  pytorch_model.bin with ``backbone.embedding.*`` keys, e.g. state-spaces/mamba-130m): keys and
  config fields are translated here, vocabulary padded as mamba-ssm pads it.
A local folder or a hub id (downloaded with huggingface_hub when online) is accepted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .mamba import CompressMambaConfig, CompressMambaForCausalLM


def resolve(path_or_id: str | Path) -> Path:
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise ValueError(f"{p} is a file; give the folder that holds config.json and the weights")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path_or_id)))
    except Exception as e:  # offline, unknown id
        raise FileNotFoundError(f"{path_or_id!r} is neither a local folder nor a reachable hub id ({e})") from e


def _mamba_ssm_config(cfg: dict) -> CompressMambaConfig:
    ssm = cfg.get("ssm_cfg", {}) or {}
    if ssm.get("layer", "Mamba1") not in ("Mamba1", None):
        raise ValueError(f"only Mamba-1 checkpoints are supported, got ssm_cfg.layer={ssm.get('layer')!r}")
    vocab = cfg["vocab_size"]
    mult = cfg.get("pad_vocab_size_multiple", 8)
    vocab = int(math.ceil(vocab / mult) * mult)
    d_model = cfg["d_model"]
    return CompressMambaConfig(
        vocab_size=vocab,
        hidden_size=d_model,
        num_hidden_layers=cfg["n_layer"],
        state_size=ssm.get("d_state", 16),
        expand=ssm.get("expand", 2),
        conv_kernel=ssm.get("d_conv", 4),
        time_step_rank=ssm.get("dt_rank", "auto"),
        use_bias=ssm.get("bias", False),
        use_conv_bias=ssm.get("conv_bias", True),
        residual_in_fp32=cfg.get("residual_in_fp32", True),
        tie_word_embeddings=cfg.get("tie_embeddings", True),
        layer_norm_epsilon=cfg.get("norm_epsilon", 1e-5),
    )


def _load_strict(model: torch.nn.Module, sd: dict, source: str) -> None:
    """load_state_dict that names every missing/unexpected key and shape mismatch, loading nothing
    unless everything fits."""
    own = model.state_dict()
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    missing = sorted(set(own) - set(sd) - tied)
    unexpected = sorted(set(sd) - set(own))
    bad = [
        f"{k}: found {tuple(sd[k].shape)}, expected {tuple(own[k].shape)}"
        for k in sorted(set(sd) & set(own))
        if sd[k].shape != own[k].shape
    ]
    if missing or unexpected or bad:
        raise ValueError(
            f"checkpoint {source} does not fit its config: missing keys {missing[:8]}, "
            f"unexpected keys {unexpected[:8]}, shape mismatches {bad[:8]}"
        )
    model.load_state_dict({k: v for k, v in sd.items()}, strict=not tied)


def load_pretrained(path_or_id: str | Path, **kwargs) -> CompressMambaForCausalLM:
    """Load any supported Mamba-1 checkpoint as a :class:`CompressMambaForCausalLM`."""
    root = resolve(path_or_id)
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{root} has no config.json")
    cfg = json.loads(cfg_path.read_text())
    mtype = cfg.get("model_type")
    if mtype in ("compressmamba", "mamba"):
        return CompressMambaForCausalLM.from_pretrained(root, **kwargs)
    if "d_model" in cfg and "n_layer" in cfg:  # mamba-ssm
        config = _mamba_ssm_config(cfg)
        weights = root / "pytorch_model.bin"
        if not weights.is_file():
            raise FileNotFoundError(f"mamba-ssm checkpoint {root} has no pytorch_model.bin")
        sd = torch.load(weights, map_location="cpu", weights_only=True)
        sd = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in sd.items()}
        model = CompressMambaForCausalLM(config)
        _load_strict(model, sd, str(root))
        return model.eval()
    raise ValueError(
        f"{root}: unknown model type {mtype!r}; expected compressmamba, mamba (transformers) or a "
        "mamba-ssm config with d_model and n_layer"
    )


@torch.no_grad()
def export_transformers(model: CompressMambaForCausalLM, out_dir: str | Path) -> Path:
    """Write a plain transformers ``MambaForCausalLM`` folder: every layer is zero-padded to the
    largest state size (padded B rows are zero, so padded states stay at zero: outputs unchanged)."""
    from transformers import MambaConfig, MambaForCausalLM

    c = model.config
    n_max = max(model.state_sizes)
    hf_cfg = MambaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        state_size=n_max,
        num_hidden_layers=c.num_hidden_layers,
        layer_norm_epsilon=c.layer_norm_epsilon,
        expand=c.expand,
        conv_kernel=c.conv_kernel,
        use_bias=c.use_bias,
        use_conv_bias=c.use_conv_bias,
        residual_in_fp32=c.residual_in_fp32,
        time_step_rank=c.time_step_rank,
        tie_word_embeddings=c.tie_word_embeddings,
        pad_token_id=c.pad_token_id,
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
    )
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for i, mixer in enumerate(model.ssm_layers()):
        n, r = mixer.state_size, mixer.dt_rank
        if n == n_max:
            continue
        pre = f"backbone.layers.{i}.mixer."
        A = sd[pre + "A_log"]
        sd[pre + "A_log"] = torch.cat([A, torch.zeros(A.shape[0], n_max - n, dtype=A.dtype)], dim=1)
        W = sd[pre + "x_proj.weight"]
        z = torch.zeros(n_max - n, W.shape[1], dtype=W.dtype)
        sd[pre + "x_proj.weight"] = torch.cat([W[:r], W[r : r + n], z, W[r + n :], z], dim=0)
    hf = MambaForCausalLM(hf_cfg)
    hf.load_state_dict(sd, strict=not c.tie_word_embeddings)
    out = Path(out_dir)
    hf.save_pretrained(out)
    return out
