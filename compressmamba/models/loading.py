"""Loading checkpoints of every registered model family, and exporting to plain transformers.

A leaf module: it reads the family specs (``registry.ModelFamily``) and never imports a model
file, so the model files import it (their ``from_pretrained`` is :func:`load_pretrained`).
For the Mamba families, three layouts:

* ours (``model_type: compressmamba`` / ``compressmamba2``, per-layer ``state_sizes``) and
  transformers' ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` (``model_type: mamba`` / ``mamba2``,
  e.g. state-spaces/mamba-130m-hf): same weight names, loaded through transformers;
* mamba-ssm's ``MambaLMHeadModel`` (config.json with ``d_model``/``n_layer``/``ssm_cfg``, whose
  ``layer`` is ``Mamba1`` or ``Mamba2``, and pytorch_model.bin with ``backbone.embedding.*`` keys,
  e.g. state-spaces/mamba-130m, state-spaces/mamba2-130m): keys and config fields are translated
  here, vocabulary padded as mamba-ssm pads it.
:func:`load_pretrained` picks the family by the checkpoint's type. A local folder or a hub id
(downloaded with huggingface_hub when online) is accepted.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import PreTrainedModel

from .. import compat
from ..registry import ModelFamily, families, family_of_mamba_ssm_layer, family_of_model_type
from .files import check_model_dir, guard_hub_id


def _mamba_ssm_layers() -> list[str]:
    return sorted(f.mamba_ssm_layer for f in families().values() if f.mamba_ssm_layer)


def _model_types() -> list[str]:
    return sorted(t for f in families().values() for t in f.model_types)


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


_HUB_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "subfolder", "force_download")


def read_config(path_or_id: str | Path, **hub_kwargs) -> dict | None:
    """config.json of a local folder or a hub id as a dict; None when there is none to be had
    (transformers then reports the problem in its own words)."""
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        f = p / hub_kwargs.get("subfolder", "") / "config.json"
        return json.loads(f.read_text()) if f.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        kw = {k: v for k, v in hub_kwargs.items() if k in _HUB_KWARGS}
        f = hf_hub_download(str(path_or_id), "config.json", **kw)
    except Exception:  # not a valid id, no config.json, offline without cache
        return None
    return json.loads(Path(f).read_text())


def _mamba_ssm_config(cfg: dict):
    """mamba-ssm's MambaConfig (d_model, n_layer, ssm_cfg, pad_vocab_size_multiple...) → (our
    family, our config): the fields every layer type shares here, the rest by the family's
    ``from_mamba_ssm``."""
    ssm = dict(cfg.get("ssm_cfg", {}) or {})
    layer = ssm.pop("layer", "Mamba1") or "Mamba1"
    family = family_of_mamba_ssm_layer(layer)
    if family is None:
        raise ValueError(f"ssm_cfg.layer={layer!r} is not supported; expected one of {_mamba_ssm_layers()}")
    if not cfg.get("rms_norm", True):
        raise ValueError("rms_norm=False (LayerNorm blocks) is not supported; expected rms_norm=True")
    if cfg.get("attn_layer_idx"):
        raise ValueError(f"attn_layer_idx={cfg['attn_layer_idx']}: hybrid attention models are not supported")
    if cfg.get("d_intermediate", 0):
        raise ValueError(f"d_intermediate={cfg['d_intermediate']}: MLP blocks are not supported; expected 0")
    shared = dict(
        vocab_size=cfg["vocab_size"],
        pad_vocab_size_multiple=cfg.get("pad_vocab_size_multiple", 8),
        hidden_size=cfg["d_model"],
        num_hidden_layers=cfg["n_layer"],
        expand=ssm.get("expand", 2),
        conv_kernel=ssm.get("d_conv", 4),
        use_bias=ssm.get("bias", False),
        use_conv_bias=ssm.get("conv_bias", True),
        residual_in_fp32=cfg.get("residual_in_fp32", True),
        tie_word_embeddings=cfg.get("tie_embeddings", True),
        layer_norm_epsilon=cfg.get("norm_epsilon", 1e-5),
    )
    return family, family.from_mamba_ssm(ssm, shared)


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


def load_mamba_ssm(root: Path, cfg: dict) -> PreTrainedModel:
    """A mamba-ssm ``MambaLMHeadModel`` folder (config.json + pytorch_model.bin or
    model.safetensors) with ``backbone.embedding.*`` keys → our Mamba-1 or Mamba-2 model
    (vocabulary padded as mamba-ssm pads it)."""
    family, config = _mamba_ssm_config(cfg)
    if (root / "pytorch_model.bin").is_file():
        sd = torch.load(root / "pytorch_model.bin", map_location="cpu", weights_only=True)
    elif (root / "model.safetensors").is_file():
        from safetensors.torch import load_file

        sd = load_file(root / "model.safetensors")
    else:
        raise FileNotFoundError(f"mamba-ssm checkpoint {root} has no pytorch_model.bin or model.safetensors")
    sd = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in sd.items()}
    model = family.causal_lm(config)
    _load_strict(model, sd, str(root))
    return model.eval()


def checkpoint_family(path_or_id, **hub_kwargs) -> tuple[ModelFamily | None, dict | None]:
    """(the family that reads the checkpoint, its config.json) — (None, None) when no config is to
    be had (transformers then reports the problem in its own words). Raises ValueError for a type
    no registered family reads."""
    cfg = read_config(path_or_id, **hub_kwargs)
    if cfg is None:
        return None, None
    mtype = cfg.get("model_type")
    if mtype is None and "d_model" in cfg and "n_layer" in cfg:
        layer = (cfg.get("ssm_cfg") or {}).get("layer", "Mamba1") or "Mamba1"
        family = family_of_mamba_ssm_layer(layer)
        if family is None:
            raise ValueError(
                f"{path_or_id}: ssm_cfg.layer={layer!r} is not supported; expected one of {_mamba_ssm_layers()}"
            )
        return family, cfg
    family = family_of_model_type(mtype) if mtype else None
    if family is None or family.causal_lm is None:
        raise ValueError(
            f"{path_or_id}: unknown model type {mtype!r}; expected one of {_model_types()} "
            "or a mamba-ssm config with d_model and n_layer"
        )
    return family, cfg


def _kind(cfg: dict) -> str:
    return cfg.get("model_type") or f"mamba-ssm {(cfg.get('ssm_cfg') or {}).get('layer', 'Mamba1')}"


def load_pretrained(path_or_id: str | Path, *args, into: type | None = None, **kwargs) -> PreTrainedModel:
    """Load any checkpoint a registered family reads — for the Mambas: Mamba-1 or Mamba-2; ours,
    transformers' or mamba-ssm's layout; a folder or a hub id — as our model of its family.
    ``into`` (a family's class, as its ``from_pretrained`` passes) requires that family.
    ``kwargs`` go to transformers' ``from_pretrained``.

    Raises ValueError for an unknown model type, a checkpoint of another family than ``into``,
    or weights that do not fit the config (naming every key and both shapes)."""
    cls = into
    if Path(path_or_id).expanduser().is_dir():  # whole files, or one line naming the broken one
        check_model_dir(path_or_id, kwargs.get("subfolder", ""))
    else:
        kwargs = guard_hub_id(str(path_or_id), kwargs)
    if kwargs.get("config") is None:
        family, cfg = checkpoint_family(path_or_id, **kwargs)
        if family is not None and cls is not None and not issubclass(family.causal_lm, cls):
            if family.load is not None:  # a family that loads its own way (the hybrids)
                raise ValueError(
                    f"{path_or_id} is a {_kind(cfg)} checkpoint; load it with compressmamba.models.load_pretrained"
                )
            name = family.causal_lm.__name__
            raise ValueError(
                f"{path_or_id} is a {name} checkpoint (model type {_kind(cfg)}); "
                f"load it with {name}.from_pretrained or compressmamba.models.load_pretrained"
            )
        if family is not None and family.load is not None:
            return family.load(path_or_id, cfg, **kwargs)
        cls = cls or (family.causal_lm if family is not None else None)
        if cfg is not None and cfg.get("model_type") is None:
            model = load_mamba_ssm(resolve(path_or_id), cfg)
            dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
            return model.to(dtype) if isinstance(dtype, torch.dtype) else model
    if cls is None:
        raise ValueError(f"{path_or_id}: no config.json to tell its model family; give a model folder or hub id")
    want_info = kwargs.pop("output_loading_info", False)
    allow_mismatch = kwargs.pop("ignore_mismatched_sizes", False)
    # transformers' own loading, as the class would run it without our override
    model, info = PreTrainedModel.from_pretrained.__func__(
        cls, path_or_id, *args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
    )
    mismatched = {} if allow_mismatch else compat.mismatched_shapes(info)
    if any(found is None for found in mismatched.values()):
        mismatched.update(_stored_shapes(path_or_id, [k for k, v in mismatched.items() if v is None], **kwargs))
    own = model.state_dict()
    mismatched = [(k, found or ("?",), own[k].shape) for k, found in mismatched.items()]
    _raise_if_bad(str(path_or_id), info["missing_keys"], info["unexpected_keys"], mismatched)
    return (model, info) if want_info else model


def _stored_shapes(path_or_id, keys: list[str], **hub_kwargs) -> dict[str, tuple]:
    """Shapes of ``keys`` as a safetensors checkpoint stores them (read from the file headers)."""
    from safetensors import safe_open

    root = resolve(path_or_id) / hub_kwargs.get("subfolder", "")
    index = root / "model.safetensors.index.json"
    files = set(json.loads(index.read_text())["weight_map"].values()) if index.is_file() else {"model.safetensors"}
    shapes = {}
    for name in files:
        if (root / name).is_file():
            with safe_open(root / name, framework="pt") as f:
                shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in keys if k in f.keys()})
    return shapes


# the config fields ours and transformers' Mamba share (state_size is per layer in ours); the
# family specs name them for export
MAMBA_SHARED_FIELDS = (
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


def _family_of(model) -> ModelFamily:
    for f in families().values():
        if f.causal_lm is not None and isinstance(model, f.causal_lm):
            return f
    raise ValueError(f"{type(model).__name__} is no registered family's causal LM; nothing to export")


@torch.no_grad()
def export_transformers(model, out_dir: str | Path, uniform: bool = False) -> Path:
    """Write a plain transformers folder of the model's stock family (``MambaForCausalLM`` /
    ``Mamba2ForCausalLM``): every layer is zero-padded to the largest state size (each mixer's
    ``padded``: the padded states get zero input weights, so they stay at zero and outputs are
    unchanged). A family with its own ``export`` (the hybrids) writes its stock form, with
    ``uniform`` the stock config at the one N every layer has."""
    import transformers

    family = _family_of(model)
    if family.export is not None:
        return family.export(model, out_dir, uniform=uniform)
    if uniform and len(set(model.state_sizes)) > 1:
        raise ValueError(f"uniform export needs one state size in every layer, the model has {model.state_sizes}")
    if family.transformers_export is None:
        raise ValueError(f"model family {family.name!r} has no stock transformers form to export to")
    config_name, model_name, keys = family.transformers_export
    hf_config, hf_model = getattr(transformers, config_name), getattr(transformers, model_name)
    c = model.config
    n_max = max(model.state_sizes)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for i, mixer in enumerate(model.ssm_layers()):
        sd.update({f"backbone.layers.{i}.mixer.{k}": v for k, v in mixer.padded(n_max).items()})
    fields = {k: getattr(c, k) for k in keys}
    if model_name == "Mamba2ForCausalLM" and c.tie_word_embeddings and not compat.MAMBA2_SAVES_TIED:
        fields["tie_word_embeddings"] = False  # an equal, untied copy: outputs unchanged
        sd["lm_head.weight"] = sd["backbone.embeddings.weight"].clone()
    hf = hf_model(hf_config(state_size=n_max, **fields))
    hf.load_state_dict(sd, strict=not hf.config.tie_word_embeddings)
    out = Path(out_dir)
    hf.save_pretrained(out)
    return out
