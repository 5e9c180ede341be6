"""Where transformers' version differences meet our code: one line each, with the versions that
need it. The rest of the package reads as if there were one transformers.

Supported: ``SUPPORTED`` below (pyproject.toml declares the same ranges; CI tests both ends,
`.ci/constraints-lowest.txt` pins the lower one). Everything else we use is public API.
"""

from __future__ import annotations

import transformers
from packaging.version import Version

# The ranges CI proves (pyproject.toml's dependencies say the same; `compressmamba env` checks them).
SUPPORTED = {
    "torch": (">=2.11", "<3"),
    "transformers": (">=4.45.2", "<6"),
    "accelerate": (">=1.0", "<2"),
    "datasets": (">=2.19", "<6"),
}

TRANSFORMERS = Version(Version(transformers.__version__).base_version)
_V5 = TRANSFORMERS >= Version("5.0")

# `PretrainedConfig` is `PreTrainedConfig` from 5.0 (the old name stays an alias there).
PreTrainedConfig = getattr(transformers, "PreTrainedConfig", None) or transformers.PretrainedConfig

# The recurrent cache's forward keyword and output field: `cache_params` up to 5.23, `cache` from
# 5.24 (which renames `cache_params=` to `cache=` in every ModelOutput and generates with `cache`).
CACHE_NAME = "cache" if TRANSFORMERS >= Version("5.24") else "cache_params"


def config_float(v) -> float:
    """A float from config.json: 5.x writes inf/nan as ``{"__float__": "Infinity"}`` (and reads
    it back itself); older releases hand that dict through as it is."""
    return float(v["__float__"]) if isinstance(v, dict) and "__float__" in v else float(v)


def tied_weights_keys(tied: dict[str, str]) -> dict[str, str] | list[str]:
    """``{target: source}`` from 5.0; 4.x wants the list of targets (and ties through
    ``get_output_embeddings()``, which every tied model here defines)."""
    return dict(tied) if _V5 else list(tied)


# transformers' Mamba2ForCausalLM declares its tied embeddings from 5.0; 4.x refuses to save a
# tied one (shared tensors), so an export there writes lm_head as an untied copy.
MAMBA2_SAVES_TIED = _V5


def needs_init(obj) -> bool:
    """False for a tensor or module that ``from_pretrained`` has already loaded. 5.x marks each
    loaded tensor (and 5.0 runs ``_init_weights`` again after loading); 4.x marks whole loaded
    modules. Our ``_init_weights`` writes in place, so it asks before every write."""
    return not getattr(obj, "_is_hf_initialized", False)


def mismatched_shapes(loading_info: dict) -> dict[str, tuple | None]:
    """Keys whose stored shape did not fit, from ``from_pretrained(output_loading_info=True)``:
    key → the stored shape, or None where the release does not report it ((key, stored,
    expected) triples in 4.45-4.49 and 5.x; bare keys in 4.50-4.57)."""
    out = {}
    for k in loading_info["mismatched_keys"]:
        out.update({k: None} if isinstance(k, str) else {k[0]: tuple(k[1])})
    return out


class RecurrentGenerationMixin:
    """What ``GenerationMixin`` must know of a model that makes its own recurrent cache (in
    ``prepare_inputs_for_generation``) and cannot rewind it."""

    # all versions: refuse assisted decoding, which would need to roll the state back
    _is_stateful = True

    # 5.x asks this before it builds a DynamicCache for the model (4.x reads
    # `_supports_cache_class`, False by default, to the same effect)
    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False


def version_status(name: str, version: str | None) -> str:
    """'ok', 'not installed', or 'outside the supported range >=a,<b' for package ``name``."""
    if version is None:
        return "not installed"
    lo, hi = SUPPORTED[name]
    v = Version(Version(version).base_version)
    if v >= Version(lo.lstrip(">=")) and v < Version(hi.lstrip("<")):
        return "ok"
    return f"outside the supported range {lo},{hi}"


def share_weight_conversions(model_type: str, like: str) -> None:
    """Checkpoints of ``model_type`` load and save with the weight conversions of stock type
    ``like`` (renamed prefixes, fused MoE experts). transformers 5.x converts checkpoint layouts
    by model type through ``conversion_mapping`` (``register_checkpoint_conversion_mapping``:
    where absent, as in 4.x, there is nothing to share); our per-layer-N hybrids have their own
    model type (``compressmamba_<family>``)."""
    try:
        from transformers.conversion_mapping import (
            get_checkpoint_conversion_mapping,
            register_checkpoint_conversion_mapping,
        )
    except ImportError:
        return
    mapping = get_checkpoint_conversion_mapping(like)
    if mapping is not None:
        register_checkpoint_conversion_mapping(model_type, mapping, overwrite=True)
