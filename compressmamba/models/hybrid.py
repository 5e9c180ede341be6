"""Hybrid language models of transformers (Mamba-2 mixers beside attention, MLP and MoE layers)
with one state size per SSM layer.

transformers' own model runs every attention, MLP, MoE and norm layer; each Mamba-2 mixer is
replaced by :class:`HybridMamba2Mixer`, compressmamba's per-layer-N mixer (the same weights
under the same names, this project's kernels, the compressible-layer protocol). The families
(``HYBRIDS``) differ in their config fields and layer patterns, not in the mixer: a stock mixer
is recognised by what it holds (``in_proj``, ``conv1d``, per-head ``A_log``, ``dt_bias``, ``D``,
``norm``, ``out_proj`` and its geometry attributes), so no family's private class is named here.

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
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from torch import Tensor, nn

from ..kernels import causal_conv1d_fn, causal_conv1d_update, ssd_scan_fn, ssd_state_update
from ..reduction.mamba import ENERGY_METHODS
from ..registry import ModelFamily, register_family
from .mamba2 import BCProjection, CompressMamba2Config, Mamba2Mixer

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
    )
}
OUR_PREFIX = "compressmamba_"


def _version_needed(h: Hybrid) -> str:
    return max(h.since, CACHE_SINCE, key=lambda v: tuple(int(x) for x in v.split(".")))


def available(model_type: str) -> str | None:
    """None when this transformers can run ``model_type`` with per-layer state sizes; else why not
    (naming the version needed)."""
    h = HYBRIDS[model_type]
    have = hasattr(transformers, h.causal_lm) and hasattr(transformers.Cache, "get_conv_state")
    if have:
        return None
    need = _version_needed(h)
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


# --- the mixer ---------------------------------------------------------------------------------
_GEOMETRY = ("num_heads", "head_dim", "n_groups", "ssm_state_size", "intermediate_size", "chunk_size", "layer_idx")
_PARAMS = ("in_proj", "conv1d", "out_proj", "A_log", "dt_bias", "D", "norm")


def is_stock_mamba2_mixer(module: nn.Module) -> bool:
    """A transformers Mamba-2 mixer of any family (recognised by its parts, not its class)."""
    if isinstance(module, HybridMamba2Mixer):
        return False
    if not all(hasattr(module, a) for a in _GEOMETRY + _PARAMS + ("time_step_limit",)):
        return False
    return isinstance(module.A_log, nn.Parameter) and module.A_log.dim() == 1


class HybridMamba2Mixer(Mamba2Mixer):
    """compressmamba's Mamba-2 mixer (per-layer N, the protocol, this project's kernels) behind
    the call transformers' hybrid decoder layers make: ``mixer(hidden_states, cache=...,
    attention_mask=...)`` (``cache_params=`` before 5.24), reading and writing the layer's conv and
    recurrent states in transformers' cache."""

    @classmethod
    def from_stock(cls, stock: nn.Module, config: CompressMamba2Config, hf_config=None) -> HybridMamba2Mixer:
        """Take over ``stock``'s parameters (the same tensors, not copies); ``hf_config`` is the
        model's transformers config."""
        if getattr(stock, "activation", "silu") != "silu":
            raise ValueError(
                f"layer {stock.layer_idx}: the mixer's conv activation is {stock.activation!r}; "
                "compressmamba's Mamba-2 kernels apply SiLU"
            )
        with torch.device("meta"):
            ours = cls(config, stock.layer_idx)
        for name in ("in_proj", "conv1d", "out_proj", "A_log", "dt_bias", "D"):
            setattr(ours, name, getattr(stock, name))
        # Falcon-H1: a scalar on the input, per-segment multipliers on in_proj's output (z, x, B,
        # C, dt: read off its mup vector), and a gated norm that may come before the gate or not
        # at all
        ours.in_multiplier = float(getattr(stock, "ssm_in_multiplier", 1.0))
        if getattr(stock, "mup_vector", None) is not None:  # Falcon-H1's config field; the buffer may be on meta
            ours.segment_multipliers = tuple(float(m) for m in hf_config.ssm_multipliers)
        if isinstance(stock.norm, nn.Identity):
            ours.norm = None
        else:
            ours.norm.weight = stock.norm.weight
            ours.norm.norm_before_gate = bool(getattr(stock.norm, "norm_before_gate", False))
            # the norm's groups as the stock norm has them: their size, or their count (Falcon-H1),
            # or neither (one group over d_inner: the gated norms before transformers 5.2x)
            size, count = getattr(stock.norm, "group_size", None), getattr(stock.norm, "n_groups", None)
            ours.norm.group_size = size or stock.intermediate_size // (count or 1)
        return ours

    in_multiplier: float = 1.0
    segment_multipliers: tuple[float, ...] | None = None

    def _project(self, hidden: Tensor) -> Tensor:
        """in_proj, with Falcon-H1's multipliers (per segment of [z | x | B | C | dt], whatever
        the layer's N is now)."""
        if self.in_multiplier != 1.0:
            hidden = hidden * self.in_multiplier
        zxbcdt = self.in_proj(hidden)
        if self.segment_multipliers is None:
            return zxbcdt
        gn = self.n_groups * self.bc_width
        widths = (self.d_inner, self.d_inner, gn, gn, self.n_heads)
        mup = torch.cat([torch.full((w,), m) for w, m in zip(widths, self.segment_multipliers)])
        return zxbcdt * mup.to(device=zxbcdt.device, dtype=zxbcdt.dtype)

    def _gate(self, y: Tensor, z: Tensor) -> Tensor:
        if self.norm is None:
            return y * F.silu(z)
        return self.norm(y, z)

    @torch.no_grad()
    def resize_(self, r: int, n_in: int | None = None) -> None:
        """The shapes of a layer cut to r states (B/C width ``n_in`` and a ``bc_proj`` when given):
        the first states of each group, or empty tensors on the meta device (``from_pretrained``
        then loads the checkpoint's values)."""
        width = n_in or r
        if width < self.state_size:
            if self.A_log.device.type == "meta":
                g, di = self.n_groups, self.d_inner
                conv_dim = di + 2 * g * width
                shapes = {
                    "in_proj.weight": (di + conv_dim + self.n_heads, self.in_proj.in_features),
                    "conv1d.weight": (conv_dim, 1, self.conv1d.weight.shape[-1]),
                }
                if self.in_proj.bias is not None:
                    shapes["in_proj.bias"] = shapes["in_proj.weight"][:1]
                if self.conv1d.bias is not None:
                    shapes["conv1d.bias"] = (conv_dim,)
                self._resize_bc_(lambda t, shape: t.new_empty(shape), shapes)
                self.bc_width = width
                self._set_state_size(width)
            else:
                self.truncate_(torch.arange(width).expand(self.n_groups, -1))
        if n_in:
            ref = self.in_proj.weight
            eye = torch.eye(r, width, dtype=torch.float64, device="cpu").expand(self.n_groups, -1, -1)
            if ref.device.type == "meta":
                self.bc_proj = BCProjection(self.n_groups, r, width).to(device=ref.device, dtype=ref.dtype)
                widths = self.config.bc_proj_in or [None] * self.config.num_hidden_layers
                widths[self.layer_idx] = width
                self.config.bc_proj_in = widths
                self._set_state_size(r)
            else:
                self.project_states_(eye.to(ref.device), eye.to(ref.device))

    def forward(self, hidden_states: Tensor, cache=None, attention_mask: Tensor | None = None, **kwargs) -> Tensor:
        cache = cache if cache is not None else kwargs.get("cache_params")
        mask = attention_mask[:, :, None] if attention_mask is not None and attention_mask.dim() == 2 else None
        dtype = hidden_states.dtype
        if mask is not None:
            hidden_states = (hidden_states * mask).to(dtype)
        b, length, _ = hidden_states.shape
        z, xBC, dt = self._split(self._project(hidden_states))
        xBC_t = xBC.transpose(1, 2)
        weight, k = self.conv1d.weight.squeeze(1), self.conv1d.weight.shape[-1]
        A = -torch.exp(self.A_log.float())
        previous = cache.get_conv_state(self.layer_idx) if cache is not None else None
        if previous is not None:
            if length != 1:
                raise NotImplementedError(
                    "several new tokens on top of a cached state (chunked prefill, assisted or speculative "
                    "decoding) are not supported by compressmamba's hybrid mixers; generate one token at a time"
                )
            xBC = causal_conv1d_update(xBC[:, 0], previous.clone(), weight, self.conv1d.bias, "silu")
            cache.update_conv_state(xBC_t, self.layer_idx, conv_kernel_size=k)
            x, B, C, delta = self._ssm_args(xBC, dt[:, 0])
            state = cache.get_recurrent_state(self.layer_idx).clone()
            y = ssd_state_update(state, x, delta, A, B, C, D=self.D.float())
            cache.update_recurrent_state(state, self.layer_idx)
            y = y.reshape(b, 1, self.d_inner)
        else:
            if cache is not None:
                cache.update_conv_state(xBC_t, self.layer_idx, conv_kernel_size=k)
            xBC = causal_conv1d_fn(xBC_t, weight, self.conv1d.bias, "silu").transpose(1, 2)
            if mask is not None:
                xBC = (xBC * mask).to(xBC.dtype)
            x, B, C, delta = self._ssm_args(xBC, dt)
            if self.stats is not None:
                self.stats.update(x, delta, A, B, C)
            y = ssd_scan_fn(
                x, delta, A, B, C, self.config.chunk_size, D=self.D.float(), return_final_states=cache is not None
            )
            if cache is not None:
                y, last = y
                cache.update_recurrent_state(last.contiguous(), self.layer_idx)
            y = y.reshape(b, length, self.d_inner)
        return self.out_proj(self._gate(y, z).to(dtype))


def _mixer_config(model: nn.Module, stock: nn.Module) -> CompressMamba2Config:
    """One config for every SSM layer of ``model`` (indexed by transformers' layer index), read
    off a stock mixer's geometry."""
    n_layers = model.config.num_hidden_layers
    return CompressMamba2Config(
        vocab_size=1,
        hidden_size=stock.in_proj.in_features,
        num_hidden_layers=n_layers,
        state_size=stock.ssm_state_size,
        num_heads=stock.num_heads,
        head_dim=stock.head_dim,
        intermediate_size=stock.intermediate_size,
        n_groups=stock.n_groups,
        conv_kernel=stock.conv1d.weight.shape[-1],
        use_bias=stock.in_proj.bias is not None,
        use_conv_bias=stock.conv1d.bias is not None,
        layer_norm_epsilon=getattr(stock.norm, "variance_epsilon", 1e-5),
        chunk_size=stock.chunk_size,
        time_step_limit=tuple(stock.time_step_limit),
    )


@torch.no_grad()
def take_over_mixers_(model: nn.Module, state_sizes=None, bc_proj_in=None) -> list[HybridMamba2Mixer]:
    """Replace every stock Mamba-2 mixer of ``model`` by :class:`HybridMamba2Mixer` (the same
    parameters; mixers taken over already stay), then cut layer i to ``state_sizes[i]`` (the
    first states of each group: the shapes a checkpoint of a cut model is loaded into) with a
    ``bc_proj`` from ``bc_proj_in[i]`` where given. Returns the mixers in layer order."""
    stock = [(name, m) for name, m in model.named_modules() if is_stock_mamba2_mixer(m)]
    if stock:
        config = _mixer_config(model, stock[0][1])
        for name, m in stock:
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, HybridMamba2Mixer.from_stock(m, config, model.config))
    mixers = ssm_mixers(model)
    if not mixers:
        raise ValueError(f"{type(model).__name__} has no Mamba-2 mixer to take over")
    sizes = list(state_sizes) if state_sizes is not None else [m.state_size for m in mixers]
    widths = list(bc_proj_in) if bc_proj_in is not None else [None] * len(mixers)
    if len(sizes) != len(mixers) or len(widths) != len(mixers):
        raise ValueError(
            f"state_sizes {sizes} / bc_proj_in {widths}: expected one entry per SSM layer ({len(mixers)} layers)"
        )
    for m, r, n_in in zip(mixers, sizes, widths):
        width = n_in or r
        if not 1 <= r <= width <= m.state_size:
            raise ValueError(
                f"layer {m.layer_idx}: state size {r} (B/C width {width}) must be in [1, {m.state_size}]"
            )
        m.resize_(r, n_in)
    return mixers


def ssm_mixers(model: nn.Module) -> list[HybridMamba2Mixer]:
    return sorted((m for m in model.modules() if isinstance(m, HybridMamba2Mixer)), key=lambda m: m.layer_idx)


class HybridMixin:
    """What a stock hybrid ``...ForCausalLM`` gains as ``Compress...ForCausalLM``: our mixers with
    per-layer N (from ``config.state_sizes``) and the compressible-model protocol."""

    hybrid: Hybrid

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        take_over_mixers_(self, getattr(config, "state_sizes", None), getattr(config, "bc_proj_in", None))

    def ssm_layers(self) -> list[HybridMamba2Mixer]:
        return ssm_mixers(self)

    @property
    def state_sizes(self) -> list[int]:
        return [m.state_size for m in self.ssm_layers()]

    def sync_config(self) -> None:
        """``config.state_sizes`` / ``bc_proj_in`` as the layers are now (after cuts)."""
        mixers = self.ssm_layers()
        self.config.state_sizes = [m.state_size for m in mixers]
        widths = [m.bc_width if m.bc_proj is not None else None for m in mixers]
        self.config.bc_proj_in = widths if any(widths) else None

    def save_pretrained(self, *args, **kwargs):
        self.sync_config()
        return super().save_pretrained(*args, **kwargs)


_CLASSES: dict[str, tuple[type, type]] = {}


def hybrid_classes(model_type: str) -> tuple[type, type]:
    """(config class, causal LM class) of the per-layer-N form of stock ``model_type``: subclasses
    of transformers' own, registered with the Auto classes as ``compressmamba_<model_type>``."""
    model_type = model_type.removeprefix(OUR_PREFIX)
    h = _require(model_type)
    if model_type not in _CLASSES:
        from transformers import AutoConfig, AutoModelForCausalLM

        base_cfg, base_lm = getattr(transformers, h.config), getattr(transformers, h.causal_lm)
        cfg_cls = type(f"Compress{base_cfg.__name__}", (base_cfg,), {"model_type": OUR_PREFIX + model_type})
        lm_cls = type(
            f"Compress{base_lm.__name__}", (HybridMixin, base_lm), {"config_class": cfg_cls, "hybrid": h}
        )
        for cls in (cfg_cls, lm_cls):  # importable by name (pickle, Accelerate's repr)
            cls.__module__ = __name__
            globals()[cls.__name__] = cls
        try:
            AutoConfig.register(cfg_cls.model_type, cfg_cls)
            AutoModelForCausalLM.register(cfg_cls, lm_cls)
        except ValueError:  # registered already
            pass
        _CLASSES[model_type] = (cfg_cls, lm_cls)
    return _CLASSES[model_type]


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
        stock_cfg = getattr(transformers, HYBRIDS[mtype].config)(**fields)
        model = from_stock(getattr(transformers, HYBRIDS[mtype].causal_lm)(stock_cfg))
    if vocab_size is not None and vocab_size > model.config.vocab_size:
        raise ValueError(
            f"the data's vocabulary ({vocab_size} tokens) exceeds the model's ({model.config.vocab_size}); "
            "use the model's tokenizer"
        )
    if state_sizes is not None:
        take_over_mixers_(model, state_sizes, getattr(model.config, "bc_proj_in", None))
    return model


# --- exports to the stock family ---------------------------------------------------------------
@torch.no_grad()
def export_stock(model: nn.Module, out_dir: str | Path, uniform: bool = False) -> Path:
    """Write ``model`` as a folder plain transformers loads as its stock family, starting from
    the original config.json and changing only the state-size field: at the original N with
    every layer zero-padded (exact), or with ``uniform`` at the one N every layer has."""
    from safetensors.torch import save_file

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
    sd = {k: v for k, v in model.state_dict().items()}
    names = {m: n for n, m in model.named_modules()}
    for m in mixers:
        prefix = names[m] + "."
        sd.update({prefix + k: v for k, v in m.padded(n_out).items()})
    for k in [k for k in sd if k in _tied_targets(model)]:
        del sd[k]
    original[h.state_field] = n_out
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
        save_file(tensors, tmp / "model.safetensors", {"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(original, indent=2, sort_keys=True) + "\n")
        for f in ("model.safetensors", "config.json"):
            os.replace(tmp / f, out / f)
    finally:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
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
        causal_lm=HybridMixin,
        model_types=tuple(t for h in HYBRIDS for t in (OUR_PREFIX + h, h)),
        load=load_hybrid,
        export=export_stock,
        description="transformers hybrids with Mamba-2 mixers (Bamba, Granite 4.0-H, Zamba2, Nemotron-H), per-layer N",
    )
)

# AutoConfig / AutoModelForCausalLM know every compressmamba_<family> this transformers can run
for _type in HYBRIDS:
    if available(_type) is None:
        hybrid_classes(_type)

__all__ = [
    "CACHE_SINCE",
    "HYBRIDS",
    "HybridMamba2Mixer",
    "available",
    "build_hybrid",
    "export_stock",
    "from_stock",
    "hybrid_classes",
    "load_hybrid",
    "take_over_mixers_",
]
