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
import sys
from pathlib import Path

import torch

from .files import check_model_dir, guard_hub_id
from .mamba import CompressMambaConfig, CompressMambaForCausalLM


def resolve(path_or_id: str | Path) -> Path:
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise ValueError(f"{p} is a file; give the folder that holds config.json and the weights")
    offline = guard_hub_id(str(path_or_id), {}).get("local_files_only", False)  # fails fast if offline, uncached
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path_or_id), local_files_only=offline))
    except Exception as e:  # offline, unknown id
        raise FileNotFoundError(f"{path_or_id!r} is neither a local folder nor a reachable hub id ({e})") from e


_HUB_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "subfolder", "force_download", "proxies")


def read_config(path_or_id: str | Path, **hub_kwargs) -> dict | None:
    """config.json of a local folder or a hub id as a dict; None when there is none to be had
    (transformers then reports the problem in its own words)."""
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        f = p / hub_kwargs.get("subfolder", "") / "config.json"
        return json.loads(f.read_text()) if f.is_file() else None
    try:
        from transformers.utils import cached_file

        kw = {k: v for k, v in hub_kwargs.items() if k in _HUB_KWARGS}
        f = cached_file(
            str(path_or_id),
            "config.json",
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **kw,
        )
    except Exception:  # not a valid id, offline without cache
        return None
    return json.loads(Path(f).read_text()) if f else None


def _mamba_ssm_config(cfg: dict) -> CompressMambaConfig:
    """mamba-ssm's MambaConfig (d_model, n_layer, ssm_cfg, pad_vocab_size_multiple...) → ours."""
    ssm = cfg.get("ssm_cfg", {}) or {}
    if ssm.get("layer", "Mamba1") not in ("Mamba1", None):
        raise ValueError(f"only Mamba-1 checkpoints are supported, got ssm_cfg.layer={ssm.get('layer')!r}")
    if not cfg.get("rms_norm", True):
        raise ValueError("rms_norm=False (LayerNorm blocks) is not supported; expected rms_norm=True")
    if cfg.get("attn_layer_idx"):
        raise ValueError(f"attn_layer_idx={cfg['attn_layer_idx']}: hybrid attention models are not supported")
    return CompressMambaConfig(
        vocab_size=cfg["vocab_size"],
        pad_vocab_size_multiple=cfg.get("pad_vocab_size_multiple", 8),
        hidden_size=cfg["d_model"],
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


def _raise_if_bad(source: str, missing, unexpected, mismatched) -> None:
    """One ValueError naming every missing/unexpected key and each (key, found, expected) shape."""
    missing, unexpected = sorted(missing), sorted(unexpected)
    bad = [f"{k}: found {tuple(f)}, expected {tuple(e)}" for k, f, e in sorted(mismatched)]
    if missing or unexpected or bad:
        raise ValueError(
            f"checkpoint {source} does not fit its config: missing keys {missing[:8]}, "
            f"unexpected keys {unexpected[:8]}, shape mismatches {bad[:8]}"
        )


def _load_strict(model: torch.nn.Module, sd: dict, source: str) -> None:
    """load_state_dict that names every missing/unexpected key and shape mismatch, loading nothing
    unless everything fits."""
    own = model.state_dict()
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    mismatched = [(k, sd[k].shape, own[k].shape) for k in set(sd) & set(own) if sd[k].shape != own[k].shape]
    _raise_if_bad(source, set(own) - set(sd) - tied, set(sd) - set(own), mismatched)
    model.load_state_dict(sd, strict=not tied)


def load_mamba_ssm(root: Path, cfg: dict) -> CompressMambaForCausalLM:
    """A mamba-ssm ``MambaLMHeadModel`` folder (config.json + pytorch_model.bin or
    model.safetensors) with ``backbone.embedding.*`` keys → our model (vocabulary padded as
    mamba-ssm pads it)."""
    config = _mamba_ssm_config(cfg)
    if (root / "pytorch_model.bin").is_file():
        sd = torch.load(root / "pytorch_model.bin", map_location="cpu", weights_only=True)
    elif (root / "model.safetensors").is_file():
        from safetensors.torch import load_file

        sd = load_file(root / "model.safetensors")
    else:
        raise FileNotFoundError(f"mamba-ssm checkpoint {root} has no pytorch_model.bin or model.safetensors")
    sd = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in sd.items()}
    model = CompressMambaForCausalLM(config)
    _load_strict(model, sd, str(root))
    return model.eval()


def load_pretrained(path_or_id: str | Path, *args, _cls=None, **kwargs) -> CompressMambaForCausalLM:
    """Load any supported Mamba-1 checkpoint (ours, transformers', mamba-ssm's; folder or hub id)
    as a :class:`CompressMambaForCausalLM`; ``kwargs`` go to transformers' ``from_pretrained``.

    Raises ValueError for an unknown model type or weights that do not fit the config."""
    cls = _cls or CompressMambaForCausalLM
    if Path(path_or_id).expanduser().is_dir():  # whole files, or one line naming the broken one
        check_model_dir(path_or_id, kwargs.get("subfolder", ""))
    else:
        kwargs = guard_hub_id(str(path_or_id), kwargs)
    if kwargs.get("config") is None:
        cfg = read_config(path_or_id, **kwargs)
        mtype = (cfg or {}).get("model_type")
        if cfg is not None and mtype is None and "d_model" in cfg and "n_layer" in cfg:
            model = load_mamba_ssm(resolve(path_or_id), cfg)
            dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
            return model.to(dtype) if isinstance(dtype, torch.dtype) else model
        if cfg is not None and mtype not in ("compressmamba", "mamba"):
            raise ValueError(
                f"{path_or_id}: unknown model type {mtype!r}; expected compressmamba, mamba (transformers) "
                "or a mamba-ssm config with d_model and n_layer"
            )
    want_info = kwargs.pop("output_loading_info", False)
    allow_mismatch = kwargs.pop("ignore_mismatched_sizes", False)
    model, info = super(CompressMambaForCausalLM, cls).from_pretrained(
        path_or_id, *args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
    )
    mismatched = [] if allow_mismatch else info["mismatched_keys"]
    _raise_if_bad(str(path_or_id), info["missing_keys"], info["unexpected_keys"], mismatched)
    return (model, info) if want_info else model


def convert_main(argv: list[str] | None = None) -> int:
    """``compressmamba convert SRC DST [--to compressmamba|transformers]``."""
    from ..cli import main

    return main(["convert", *(sys.argv[1:] if argv is None else argv)])


# the fields our config and transformers' MambaConfig share (state_size is per layer in ours)
_SHARED_CONFIG_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "layer_norm_epsilon",
    "expand",
    "conv_kernel",
    "use_bias",
    "use_conv_bias",
    "residual_in_fp32",
    "time_step_rank",
    "tie_word_embeddings",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
)


@torch.no_grad()
def export_transformers(model: CompressMambaForCausalLM, out_dir: str | Path) -> Path:
    """Write a plain transformers ``MambaForCausalLM`` folder: every layer is zero-padded to the
    largest state size (padded B rows are zero, so padded states stay at zero: outputs unchanged)."""
    from transformers import MambaConfig, MambaForCausalLM

    c = model.config
    n_max = max(model.state_sizes)
    hf_cfg = MambaConfig(state_size=n_max, **{k: getattr(c, k) for k in _SHARED_CONFIG_KEYS})
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
