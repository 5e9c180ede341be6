"""Language models of transformers with Mamba mixers (hybrids beside attention, MLP and MoE
layers, and Falcon-Mamba) with one state size per SSM layer (docs/hybrids.md).

transformers' own model runs every attention, MLP, MoE and norm layer; each Mamba-2 mixer is
replaced by :class:`HybridMamba2Mixer` and each Mamba-1 mixer by :class:`HybridMambaMixer`
(models/hybrid_mixers.py; this module holds the families, their classes, loading and export),
compressmamba's per-layer-N mixers (the same weights under the same names, this project's
kernels, the compressible-layer protocol). The families (``HYBRIDS``) differ in their config
fields and layer patterns, less in the mixer: a stock mixer is recognised by what it holds
(``in_proj``, ``conv1d``, ``A_log`` per head (Mamba-2) or per channel and state (Mamba-1), ...),
so no family's private class is named here; the few family options (Falcon-H1's multipliers,
norms before the gate, Jamba's and Falcon-Mamba's Δ/B/C norms) are read off the stock module.

Three forms on disk (docs/hybrids.md):

* ours: ``save_pretrained`` writes ``model_type: compressmamba_<family>`` with ``state_sizes``
  (one per SSM layer, in layer order) and ``bc_proj_in``; ``AutoModelForCausalLM`` loads it
  after ``import compressmamba``;
* :func:`export_stock` (``uniform=False``): the stock family at the original config's N, every
  cut layer zero-padded inside each group (exact: padded states get B = SiLU(0) = 0);
* :func:`export_stock` (``uniform=True``): every SSM layer at the same N, written as the stock
  config with that smaller N (the form that saves memory in stock runtimes).

Both exports start from the original ``config.json`` and change only the state-size field.
Cached generation needs transformers' per-layer recurrent cache (``Cache.get_conv_state``, from
5.21), whose layers take their shapes from the first state written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from packaging.version import Version
from torch import nn

from .. import compat
from ..atomic import atomic_write, atomic_write_text
from ..reduction.mamba import ENERGY_METHODS
from ..registry import ModelFamily, register_family
from .hybrid_mixers import (
    HybridMamba2Mixer,
    HybridMambaMixer,
    is_stock_mamba2_mixer,
    is_stock_mamba_mixer,
    is_stock_mixer,
    ssm_mixers,
    take_over_mixers_,
)

# transformers' Cache holds each linear-attention layer's conv and recurrent state with that
# layer's own shape, through get_conv_state / update_conv_state(..., conv_kernel_size) /
# get_recurrent_state / update_recurrent_state, from 5.21.
CACHE_SINCE = "5.21"


@dataclass(frozen=True)
class Hybrid:
    """One transformers hybrid family: its model type, public class names, the config field of
    the SSM state size N, and the first transformers release that has it."""

    model_type: str
    causal_lm: str
    config: str
    state_field: str
    since: str
    description: str
    mixer: str = "mamba2"  # or "mamba": Mamba-1 mixers (per-channel A; no balanced truncation)


HYBRIDS = {
    h.model_type: h
    for h in (
        Hybrid("bamba", "BambaForCausalLM", "BambaConfig", "mamba_d_state", "4.48", "IBM Bamba"),
        Hybrid(
            "granitemoehybrid",
            "GraniteMoeHybridForCausalLM",
            "GraniteMoeHybridConfig",
            "mamba_d_state",
            "4.52",
            "IBM Granite 4.0-H",
        ),
        Hybrid("zamba2", "Zamba2ForCausalLM", "Zamba2Config", "mamba_d_state", "4.49", "Zyphra Zamba2"),
        Hybrid("nemotron_h", "NemotronHForCausalLM", "NemotronHConfig", "ssm_state_size", "5.3", "NVIDIA Nemotron-H"),
        Hybrid("falcon_h1", "FalconH1ForCausalLM", "FalconH1Config", "mamba_d_state", "4.53", "TII Falcon-H1"),
        Hybrid("jamba", "JambaForCausalLM", "JambaConfig", "mamba_d_state", "4.40", "AI21 Jamba", "mamba"),
        Hybrid(
            "falcon_mamba",
            "FalconMambaForCausalLM",
            "FalconMambaConfig",
            "state_size",
            "4.45",
            "TII Falcon-Mamba",
            "mamba",
        ),
    )
}
OUR_PREFIX = "compressmamba_"


def _version_needed(h: Hybrid) -> str:
    return max(h.since, CACHE_SINCE, key=lambda v: tuple(int(x) for x in v.split(".")))


def available(model_type: str) -> str | None:
    """None when this transformers can run ``model_type`` with per-layer state sizes; else why not
    (naming the version needed). Decided by version, so that no modeling module is imported."""
    h = HYBRIDS[model_type]
    need = _version_needed(h)
    if Version(transformers.__version__) >= Version(need):
        return None
    return (
        f"model type {model_type!r} ({h.description}) with one state size per layer needs transformers >= "
        f"{need} (installed: {transformers.__version__}): pip install -U 'transformers>={need}'"
    )


def _require(model_type: str) -> Hybrid:
    if model_type not in HYBRIDS:
        raise ValueError(f"model type {model_type!r} is not a supported hybrid; expected one of {sorted(HYBRIDS)}")
    why = available(model_type)
    if why:
        raise ImportError(why)
    return HYBRIDS[model_type]


class HybridMixin:
    """What a stock hybrid ``...ForCausalLM`` gains as ``Compress...ForCausalLM``: our mixers with
    per-layer N (from ``config.state_sizes``) and the compressible-model protocol."""

    hybrid: Hybrid

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        take_over_mixers_(self, getattr(config, "state_sizes", None), getattr(config, "bc_proj_in", None))

    def ssm_layers(self) -> list[nn.Module]:
        return ssm_mixers(self)

    @property
    def state_sizes(self) -> list[int]:
        return [m.state_size for m in self.ssm_layers()]

    def sync_config(self) -> None:
        """``config.state_sizes`` / ``bc_proj_in`` as the layers are now (after cuts)."""
        mixers = self.ssm_layers()
        self.config.state_sizes = [m.state_size for m in mixers]
        widths = [m.bc_width if getattr(m, "bc_proj", None) is not None else None for m in mixers]
        self.config.bc_proj_in = widths if any(widths) else None

    def save_pretrained(self, *args, **kwargs):
        self.sync_config()
        return super().save_pretrained(*args, **kwargs)


_CONFIGS: dict[str, type] = {}
_CLASSES: dict[str, tuple[type, type]] = {}


def _publish(cls: type) -> type:
    cls.__module__ = __name__  # importable by name (pickle, Accelerate's repr)
    globals()[cls.__name__] = cls
    return cls


def hybrid_config_class(model_type: str) -> type:
    """The config class of the per-layer-N form of stock ``model_type`` (a subclass of transformers'
    own, model type ``compressmamba_<model_type>``); imports the stock configuration module only."""
    model_type = model_type.removeprefix(OUR_PREFIX)
    h = _require(model_type)
    if model_type not in _CONFIGS:
        base_cfg = getattr(transformers, h.config)
        cfg_cls = type(f"Compress{base_cfg.__name__}", (base_cfg,), {"model_type": OUR_PREFIX + model_type})
        _CONFIGS[model_type] = _publish(cfg_cls)
    return _CONFIGS[model_type]


def hybrid_classes(model_type: str) -> tuple[type, type]:
    """(config class, causal LM class) of the per-layer-N form of stock ``model_type``: subclasses
    of transformers' own, registered with the Auto classes as ``compressmamba_<model_type>``
    (this imports the stock family's modeling module; :func:`register_auto_lazily` does not)."""
    model_type = model_type.removeprefix(OUR_PREFIX)
    h = _require(model_type)
    if model_type not in _CLASSES:
        from transformers import AutoModelForCausalLM

        cfg_cls, base_lm = hybrid_config_class(model_type), getattr(transformers, h.causal_lm)
        lm_cls = type(
            f"Compress{base_lm.__name__}", (HybridMixin, base_lm), {"config_class": cfg_cls, "hybrid": h}
        )
        _publish(lm_cls)
        compat.share_weight_conversions(cfg_cls.model_type, model_type)
        AutoModelForCausalLM.register(cfg_cls, lm_cls, exist_ok=True)  # replaces the lazy entry
        _CLASSES[model_type] = (cfg_cls, lm_cls)
    return _CLASSES[model_type]


def _lazy_causal_lm(model_type: str, cfg_cls: type) -> type:
    """What ``AutoModelForCausalLM`` holds for ``compressmamba_<model_type>`` until the family is
    first built: a stand-in whose ``from_pretrained`` / ``_from_config`` build the real class
    (:func:`hybrid_classes`) and hand over to it."""

    def from_pretrained(cls, *args, **kwargs):
        return hybrid_classes(model_type)[1].from_pretrained(*args, **kwargs)

    def _from_config(cls, config, **kwargs):
        return hybrid_classes(model_type)[1]._from_config(config, **kwargs)

    methods = {"from_pretrained": classmethod(from_pretrained), "_from_config": classmethod(_from_config)}
    return type(f"Lazy{cfg_cls.__name__}ForCausalLM", (), {"config_class": cfg_cls, **methods})


def register_auto_lazily() -> None:
    """``AutoConfig`` / ``AutoModelForCausalLM`` know every ``compressmamba_<family>`` this
    transformers can run, through transformers' public ``register``: the config class now (the
    stock configuration module only), the model class when the family is first built or loaded."""
    from transformers import AutoConfig, AutoModelForCausalLM

    for model_type in HYBRIDS:
        if available(model_type) is not None or model_type in _CLASSES:
            continue
        cfg_cls = hybrid_config_class(model_type)
        AutoConfig.register(cfg_cls.model_type, cfg_cls, exist_ok=True)
        AutoModelForCausalLM.register(cfg_cls, _lazy_causal_lm(model_type, cfg_cls), exist_ok=True)


def _stock_type(model_type: str) -> str:
    return model_type.removeprefix(OUR_PREFIX)


def from_stock(stock: nn.Module, original_config: dict | None = None) -> nn.Module:
    """A stock hybrid model (loaded by transformers) as our class, in place: its mixers taken
    over, its config our subclass (keeping ``original_config``, the config.json it came from)."""
    mtype = stock.config.model_type
    cfg_cls, lm_cls = hybrid_classes(mtype)
    fields = stock.config.to_dict()
    fields.pop("model_type", None)
    config = cfg_cls(**fields)
    config.original_config = original_config or stock.config.to_dict()
    take_over_mixers_(stock)
    stock.__class__ = lm_cls
    stock.config = config
    stock.sync_config()
    return stock


def load_hybrid(path_or_id, cfg: dict, **kwargs) -> nn.Module:
    """A hybrid checkpoint — stock (``model_type`` e.g. ``bamba``) or ours
    (``compressmamba_bamba``) — as our per-layer-N model."""
    from transformers import AutoModelForCausalLM

    mtype = cfg.get("model_type", "")
    _, lm_cls = hybrid_classes(mtype)
    if mtype.startswith(OUR_PREFIX):
        return lm_cls.from_pretrained(path_or_id, **kwargs)
    return from_stock(AutoModelForCausalLM.from_pretrained(path_or_id, **kwargs), original_config=cfg)


def build_hybrid(
    pretrained: str | None = None,
    config: dict | None = None,
    state_sizes: list[int] | None = None,
    vocab_size: int | None = None,
    seed: int | None = None,
    **_info,
):
    """Recipe builder (``model.name: hybrid``): a hybrid transformers model from ``pretrained`` (a
    folder or hub id of any family in ``HYBRIDS``, stock or ours) or from ``config`` (the stock
    config's fields with its ``model_type``, a fresh model: tiny CPU recipes and tests), with
    every SSM layer cut to ``state_sizes`` when given (a resumed run)."""
    from .loading import load_pretrained

    if (pretrained is None) == (config is None):
        raise ValueError("model 'hybrid' needs exactly one of model.pretrained (a folder or hub id) and model.config")
    if pretrained is not None:
        model = load_pretrained(pretrained)
    else:
        fields = dict(config)
        mtype = _stock_type(str(fields.pop("model_type", "")))
        if mtype not in HYBRIDS:
            raise ValueError(
                f"model.config.model_type = {config.get('model_type')!r}: expected one of {sorted(HYBRIDS)}"
            )
        _require(mtype)
        if vocab_size is not None:
            fields.setdefault("vocab_size", vocab_size)
        try:
            stock_cfg = getattr(transformers, HYBRIDS[mtype].config)(**fields)
        except Exception as e:  # transformers' own validation (5.x: huggingface_hub's strict-dataclass errors)
            why = " ".join(str(e).split())
            raise ValueError(
                f"model.config does not make a {HYBRIDS[mtype].config}: {why}; fix the named field"
            ) from None
        model = from_stock(getattr(transformers, HYBRIDS[mtype].causal_lm)(stock_cfg))
    if vocab_size is not None and vocab_size > model.config.vocab_size:
        raise ValueError(
            f"the data's vocabulary ({vocab_size} tokens) exceeds the model's ({model.config.vocab_size}); "
            "use the model's tokenizer"
        )
    if state_sizes is not None:
        take_over_mixers_(model, state_sizes, getattr(model.config, "bc_proj_in", None))
    return model


def _recipe_model_type(model_cfg: dict) -> str | None:
    """The stock model type a recipe's ``model`` mapping builds: ``config.model_type``, or a local
    ``pretrained`` folder's config.json (None: a hub id, known only once loaded)."""
    if isinstance(model_cfg.get("config"), dict):
        return _stock_type(str(model_cfg["config"].get("model_type", "")))
    path = Path(str(model_cfg.get("pretrained", ""))).expanduser() / "config.json"
    if model_cfg.get("pretrained") and path.is_file():
        return _stock_type(str(json.loads(path.read_text()).get("model_type", "")))
    return None


def recipe_energy_methods(model_cfg: dict) -> tuple[str, ...]:
    """The energy methods of the hybrid a recipe builds: ``balanced`` for Mamba-2 mixers only."""
    h = HYBRIDS.get(_recipe_model_type(model_cfg) or "")
    return ENERGY_METHODS if h is not None and h.mixer == "mamba" else (*ENERGY_METHODS, "balanced")


# --- exports to the stock family ---------------------------------------------------------------
@torch.no_grad()
def export_stock(model: nn.Module, out_dir: str | Path, uniform: bool = False) -> Path:
    """Write ``model`` as a folder plain transformers loads as its stock family, starting from
    the original config.json and changing only the state-size field: at the original N with
    every layer zero-padded (exact), or with ``uniform`` at the one N every layer has."""
    from safetensors.torch import save

    h = model.hybrid
    mixers = model.ssm_layers()
    sizes = [m.state_size for m in mixers]
    original = dict(getattr(model.config, "original_config", None) or model.config.to_dict())
    original["model_type"] = h.model_type
    n_orig = int(original[h.state_field])
    if uniform:
        if len(set(sizes)) != 1:
            raise ValueError(
                f"uniform export needs one state size in every SSM layer, the model has {sizes}; cut it with "
                "reduction.uniform / compress --uniform"
            )
        n_out = sizes[0]
    else:
        n_out = max(n_orig, max(sizes))
    sd = dict(model.state_dict())
    names = {m: n for n, m in model.named_modules()}
    for m in mixers:
        prefix = names[m] + "."
        sd.update({prefix + k: v for k, v in m.stock_tensors(n_out, uniform).items()})
    for k in _tied_targets(model):
        sd.pop(k, None)
    original[h.state_field] = n_out
    out = Path(out_dir)
    tensors = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    atomic_write(out / "model.safetensors", lambda f: f.write(save(tensors, {"format": "pt"})))
    atomic_write_text(out / "config.json", json.dumps(original, indent=2, sort_keys=True) + "\n")
    return out


def _tied_targets(model) -> set[str]:
    """Parameter names that share storage with an earlier one (tied embeddings)."""
    seen, tied = {}, set()
    for k, v in model.state_dict(keep_vars=True).items():
        key = (v.data_ptr(), v.shape)
        if key in seen:
            tied.add(k)
        seen.setdefault(key, k)
    return tied


FAMILY = register_family(
    ModelFamily(
        name="hybrid",
        build=build_hybrid,
        energy_methods=(*ENERGY_METHODS, "balanced"),
        default_energy_method="output",
        recipe_energy_methods=recipe_energy_methods,
        causal_lm=HybridMixin,
        model_types=tuple(t for h in HYBRIDS for t in (OUR_PREFIX + h, h)),
        load=load_hybrid,
        export=export_stock,
        description="transformers' hybrids, per-layer N: Mamba-2 mixers (Bamba, Granite 4.0-H, Zamba2, "
        f"Nemotron-H, Falcon-H1), Mamba-1 mixers (Jamba, Falcon-Mamba); transformers >= {CACHE_SINCE}",
    )
)

register_auto_lazily()

__all__ = [
    "CACHE_SINCE",
    "HYBRIDS",
    "HybridMamba2Mixer",
    "HybridMambaMixer",
    "available",
    "build_hybrid",
    "export_stock",
    "from_stock",
    "hybrid_classes",
    "hybrid_config_class",
    "register_auto_lazily",
    "is_stock_mamba2_mixer",
    "is_stock_mamba_mixer",
    "is_stock_mixer",
    "load_hybrid",
    "ssm_mixers",
    "take_over_mixers_",
]
