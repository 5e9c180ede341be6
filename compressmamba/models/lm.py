"""What every state-space causal LM here shares, whatever its mixer (Mamba-1, Mamba-2):
pre-norm residual blocks, the backbone, the recurrent decoding cache (one state size per layer),
weight initialisation that spares loaded tensors, and generation through transformers.

A mixer class plugs in by offering ``__init__(config, layer_idx)``, ``forward(hidden, cache)``
(prefill when the cache is empty, one token when it is not), ``reset_parameters(where)`` and the
compressible-layer protocol (models/protocol.py). Weight names follow transformers' Mamba and
Mamba2 models: ``backbone.embeddings``, ``backbone.layers.{i}.{norm, mixer}``,
``backbone.norm_f``, ``lm_head``.
"""

from __future__ import annotations

import math
from dataclasses import make_dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from .. import compat
from .common import per_layer_sizes
from .protocol import IGNORE_INDEX, CompressibleLayer, next_token_pairs


def padded_vocab(vocab_size: int, multiple: int) -> int:
    """``vocab_size`` rounded up to a multiple of ``multiple``, as mamba-ssm pads it (1: as given)."""
    if int(multiple) < 1:
        raise ValueError(f"pad_vocab_size_multiple must be >= 1, got {multiple}")
    return -(-int(vocab_size) // int(multiple)) * int(multiple)


# the fields every SSM language-model config here has (Mamba-1 and Mamba-2 alike)
SHARED_CONFIG_FIELDS = (
    "hidden_size", "num_hidden_layers", "layer_norm_epsilon", "expand", "conv_kernel", "use_bias", "use_conv_bias",
    "residual_in_fp32", "initializer_range", "time_step_min", "time_step_max", "time_step_floor",
    "rescale_prenorm_residual", "use_cache",
)  # fmt: skip


def set_state_sizes(config, sizes: list[int], layer: int | None = None) -> None:
    """``config.state_sizes`` = ``sizes`` (or, with ``layer``, that layer's entry = ``sizes[0]``),
    and ``config.state_size`` their largest: the one place the two are kept in step."""
    if layer is None:
        config.state_sizes = list(sizes)
    else:
        config.state_sizes[layer] = sizes[0]
    config.state_size = max(config.state_sizes)


def set_shared_config_fields(config, args: dict, alias: dict) -> None:
    """Set ``config``'s shared fields from its ``__init__``'s arguments (``args``, its locals())
    and the mamba-ssm aliases it was given (``alias``: our name → value, which win): the padded
    vocabulary, ``SHARED_CONFIG_FIELDS``, one state size per layer, and ``time_step_rank``
    ("auto": ceil(hidden_size / 16))."""
    for name in SHARED_CONFIG_FIELDS:
        setattr(config, name, alias.get(name, args[name]))
    config.vocab_size = padded_vocab(args["vocab_size"], args["pad_vocab_size_multiple"])
    config.pad_vocab_size_multiple = int(args["pad_vocab_size_multiple"])
    set_state_sizes(config, per_layer_sizes(args["state_size"], args["state_sizes"], config.num_hidden_layers))
    rank = alias.get("time_step_rank", args["time_step_rank"])
    config.time_step_rank = math.ceil(config.hidden_size / 16) if rank == "auto" else int(rank)


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RecurrentCache:
    """Recurrent decoding state: per layer a conv state (b, channels, d_conv) and an SSM state
    whose last axis is that layer's own N ((b, d_inner, N) for Mamba-1, (b, H, P, N) for Mamba-2)."""

    def __init__(self, n_layers: int):
        self.conv: list[Tensor | None] = [None] * n_layers
        self.ssm: list[Tensor | None] = [None] * n_layers
        self.offset = 0  # tokens seen

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.offset

    def reorder_cache(self, beam_idx: Tensor) -> None:
        self.conv = [c.index_select(0, beam_idx.to(c.device)) if c is not None else None for c in self.conv]
        self.ssm = [s.index_select(0, beam_idx.to(s.device)) if s is not None else None for s in self.ssm]

    def keep_conv_inputs(self, layer_idx: int, x: Tensor, width: int) -> None:
        """After a prefill: the last ``width`` conv inputs of x (b, channels, l), left-padded."""
        self.conv[layer_idx] = F.pad(x, (max(0, width - x.shape[-1]), 0))[..., -width:].float().contiguous()


# loss, logits and the recurrent cache, under the name this transformers generates with
SSMLMOutput = make_dataclass(
    "SSMLMOutput",
    [("loss", Tensor | None, None), ("logits", Tensor | None, None), (compat.CACHE_NAME, RecurrentCache | None, None)],
    bases=(ModelOutput,),
    namespace={"__module__": __name__},
)


class Block(nn.Module):
    """x + mixer(norm(x)), the residual kept in fp32 when ``config.residual_in_fp32``."""

    def __init__(self, config, layer_idx: int, mixer_cls: type[nn.Module]):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.mixer = mixer_cls(config, layer_idx)

    def forward(self, x: Tensor, cache: RecurrentCache | None = None) -> Tensor:
        residual = x.float() if self.residual_in_fp32 else x
        return (residual + self.mixer(self.norm(x.to(self.norm.weight.dtype)), cache)).to(x.dtype)


def blocks(config, mixer_cls) -> nn.ModuleList:
    return nn.ModuleList(Block(config, i, mixer_cls) for i in range(config.num_hidden_layers))


class Backbone(nn.Module):
    def __init__(self, config, mixer_cls: type[nn.Module]):
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = blocks(config, mixer_cls)
        self.norm_f = RMSNorm(config.hidden_size, config.layer_norm_epsilon)

    def forward(self, input_ids: Tensor, cache: RecurrentCache | None = None) -> Tensor:
        h = self.embeddings(input_ids)
        for layer in self.layers:
            h = layer(h, cache)
        if cache is not None:
            cache.offset += input_ids.shape[1]
        return self.norm_f(h)


class MixerBase(nn.Module):
    """What the Mamba-1 and Mamba-2 mixers share: calibration statistics (``self.stats``, set by
    their ``start_stats``) and mamba-ssm's initialisation of Δ's bias and of ``out_proj``."""

    def pop_stats(self) -> dict:
        s, self.stats = self.stats, None
        if s is None:
            raise RuntimeError("pop_stats() without start_stats()")
        return s.as_dict()

    @staticmethod
    def initial_dt_bias(n: int, config) -> Tensor:
        """(n,) softplus⁻¹(Δ) with Δ log-uniform in [time_step_min, time_step_max], floored at
        time_step_floor (mamba-ssm's dt initialisation)."""
        lo, hi = math.log(config.time_step_min), math.log(config.time_step_max)
        dt = torch.exp(torch.rand(n) * (hi - lo) + lo).clamp(min=config.time_step_floor)
        return dt + torch.log(-torch.expm1(-dt))  # inverse softplus

    @torch.no_grad()
    def rescale_out_proj(self, where) -> None:
        """``rescale_prenorm_residual``: out_proj's Kaiming-uniform weight divided by √depth."""
        c = self.config
        if c.rescale_prenorm_residual and where(self.out_proj.weight):
            nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))
            self.out_proj.weight /= math.sqrt(c.num_hidden_layers)


@torch.no_grad()
def init_weights(module: nn.Module, config) -> None:
    """Initialise what ``from_pretrained`` did not load (every tensor of a fresh model): mixers
    by their own ``reset_parameters``, embeddings N(0, initializer_range), norms to one."""
    if not compat.needs_init(module):
        return
    if isinstance(module, CompressibleLayer):
        module.reset_parameters(where=compat.needs_init)
    elif isinstance(module, nn.Embedding) and compat.needs_init(module.weight):
        module.weight.normal_(0.0, config.initializer_range)
    elif isinstance(module, RMSNorm) and compat.needs_init(module.weight):
        module.weight.fill_(1.0)


class SSMForCausalLM(compat.RecurrentGenerationMixin, PreTrainedModel, GenerationMixin):
    """A causal LM of pre-norm SSM blocks; subclasses set ``config_class`` and ``mixer_cls``.
    ``forward(input_ids, labels)`` → ``.loss``, ``.logits``."""

    base_model_prefix = "backbone"
    _no_split_modules = ["Block"]
    _tied_weights_keys = compat.tied_weights_keys({"lm_head.weight": "backbone.embeddings.weight"})
    mixer_cls: type[nn.Module]

    def __init__(self, config):
        super().__init__(config)
        self.backbone = Backbone(config, self.mixer_cls)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        init_weights(module, self.config)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load any checkpoint of this class's family — ours, the stock transformers family it
        shares weight names with, or mamba-ssm's layout — from a folder or a hub id. Strict: a
        missing, unexpected or mis-shaped weight raises ValueError naming the key and both shapes
        (transformers would re-initialise it silently). See ``loading.load_pretrained``."""
        from .loading import load_pretrained

        return load_pretrained(pretrained_model_name_or_path, *args, into=cls, **kwargs)

    def get_input_embeddings(self):
        return self.backbone.embeddings

    def set_input_embeddings(self, value):
        self.backbone.embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids: Tensor,
        labels: Tensor | None = None,
        cache: RecurrentCache | None = None,
        use_cache: bool | None = None,
        cache_params: RecurrentCache | None = None,
        **kwargs,
    ) -> SSMLMOutput:
        """input_ids (b, l) → logits (b, l, vocab); with a ``cache`` (``cache_params`` before
        transformers 5.24, both accepted) the first call fills the recurrent cache (prefill) and
        later calls take one token each. The output carries the cache as ``compat.CACHE_NAME``."""
        cache = cache if cache is not None else cache_params
        if cache is not None and cache.offset > 0 and input_ids.shape[1] != 1:
            raise ValueError(f"with a filled cache, input_ids must hold one new token, got {input_ids.shape[1]}")
        h = self.backbone(input_ids, cache)
        logits = self.lm_head(h.to(self.lm_head.weight.dtype)).float()
        loss = None
        if labels is not None:
            pred, target = next_token_pairs(logits, labels)
            loss = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX)
        return SSMLMOutput(loss=loss, logits=logits, **{compat.CACHE_NAME: cache})

    def prepare_inputs_for_generation(self, input_ids, use_cache=True, **kwargs):
        """The prompt on the first call, then only the newest token: the cache holds the rest."""
        if use_cache is False:
            return {"input_ids": input_ids}
        cache = kwargs.get(compat.CACHE_NAME)
        if cache is None:
            cache = RecurrentCache(self.config.num_hidden_layers)
        if cache.offset > 0:
            input_ids = input_ids[:, -1:]
        return {"input_ids": input_ids, compat.CACHE_NAME: cache, "use_cache": True}

    def ssm_layers(self) -> list[nn.Module]:
        return [layer.mixer for layer in self.backbone.layers]

    @property
    def state_sizes(self) -> list[int]:
        return [m.state_size for m in self.ssm_layers()]
