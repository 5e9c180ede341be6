"""Mamba-1 language model with one state size per layer (transformers-compatible weights).

Weight names follow transformers' ``MambaForCausalLM`` (``backbone.embeddings``,
``backbone.layers.{i}.mixer.{in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj}``,
``backbone.layers.{i}.norm``, ``backbone.norm_f``, ``lm_head``), so its checkpoints load as they
are; ``config.state_sizes`` holds each layer's N.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from transformers.utils import ModelOutput

from .. import compat
from ..kernels import (
    causal_conv1d_fn,
    causal_conv1d_update,
    selective_scan_fn,
    selective_state_update,
)
from ..reduction.mamba import ENERGY_METHODS
from ..registry import ModelFamily, register_family
from .common import cut_to_sizes_, masked_mean, per_layer_sizes
from .lm import (
    MixerBase,
    RecurrentCache,
    RMSNorm,
    SSMForCausalLM,
    blocks,
    init_weights,
    set_shared_config_fields,
    set_state_sizes,
)
from .loading import MAMBA_SHARED_FIELDS


class CompressMambaConfig(compat.PreTrainedConfig):
    """transformers' MambaConfig fields plus ``state_sizes`` (one N per layer).

    mamba-ssm's names are accepted as aliases (``d_model``, ``n_layer``, ``d_inner``, ``d_conv``,
    ``dt_rank``, ``conv_bias``, ``bias``, ``rms_norm_eps``); ``vocab_size`` is rounded up to a
    multiple of ``pad_vocab_size_multiple`` as mamba-ssm does (1: as given)."""

    model_type = "compressmamba"
    attribute_map = {
        "d_model": "hidden_size",
        "n_layer": "num_hidden_layers",
        "d_inner": "intermediate_size",
        "d_conv": "conv_kernel",
        "dt_rank": "time_step_rank",
        "conv_bias": "use_conv_bias",
        "bias": "use_bias",
        "rms_norm_eps": "layer_norm_epsilon",
    }

    def __init__(
        self,
        vocab_size: int = 50280,
        hidden_size: int = 768,
        state_size: int = 16,
        state_sizes: list[int] | None = None,
        num_hidden_layers: int = 32,
        layer_norm_epsilon: float = 1e-5,
        pad_token_id: int = 0,
        bos_token_id: int = 0,
        eos_token_id: int = 0,
        expand: int = 2,
        intermediate_size: int | None = None,
        conv_kernel: int = 4,
        use_bias: bool = False,
        use_conv_bias: bool = True,
        initializer_range: float = 0.1,
        residual_in_fp32: bool = True,
        time_step_rank: int | str = "auto",
        time_step_scale: float = 1.0,
        time_step_min: float = 0.001,
        time_step_max: float = 0.1,
        time_step_floor: float = 1e-4,
        rescale_prenorm_residual: bool = True,
        tie_word_embeddings: bool = True,
        pad_vocab_size_multiple: int = 1,
        use_cache: bool = True,
        **kwargs,
    ):
        alias = {name: kwargs.pop(a) for a, name in self.attribute_map.items() if a in kwargs}
        set_shared_config_fields(self, locals(), alias)
        self.intermediate_size = int(alias.get("intermediate_size", intermediate_size) or expand * self.hidden_size)
        self.time_step_scale = time_step_scale
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )


class MambaMixer(MixerBase):
    """in_proj → causal conv1d → SiLU → x_proj (dt, B, C) → dt_proj → selective scan (D skip,
    SiLU(z) gate) → out_proj. Implements the compressible-layer protocol."""

    needs_calibration = True
    # optimizer groups (names relative to the layer; see models/protocol.py)
    no_weight_decay_params = ("A_log", "D", "dt_proj.bias")
    ssm_params = ("A_log",)

    def __init__(self, config: CompressMambaConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        h, i, k, r = config.hidden_size, config.intermediate_size, config.conv_kernel, config.time_step_rank
        n = config.state_sizes[layer_idx]
        self.state_size, self.dt_rank, self.d_inner = n, r, i
        self.in_proj = nn.Linear(h, 2 * i, bias=config.use_bias)
        self.conv1d = nn.Conv1d(i, i, k, groups=i, padding=k - 1, bias=config.use_conv_bias)
        self.x_proj = nn.Linear(i, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, i, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(i, 1))
        self.D = nn.Parameter(torch.ones(i))
        self.out_proj = nn.Linear(i, h, bias=config.use_bias)
        self.stats = None

    @torch.no_grad()
    def reset_parameters(self, where=lambda t: True):
        """mamba-ssm's initialisation of the SSM parameters (and out_proj's, rescaled by the
        depth when ``rescale_prenorm_residual``), of each tensor for which ``where`` holds."""
        c, n = self.config, self.state_size
        if where(self.dt_proj.weight):
            std = self.dt_rank**-0.5 * c.time_step_scale
            self.dt_proj.weight.uniform_(-std, std)
        if where(self.dt_proj.bias):
            self.dt_proj.bias.copy_(self.initial_dt_bias(self.d_inner, c))
        if where(self.A_log):
            self.A_log.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        if where(self.D):
            self.D.fill_(1.0)
        self.rescale_out_proj(where)

    def ssm_inputs(self, hidden: Tensor):
        """hidden (b, l, H) → u, z (b, d, l), dt (b, d, l) before bias, B, C (b, n, l)."""
        l = hidden.shape[1]
        xz = self.in_proj(hidden).transpose(1, 2)
        x, z = xz.chunk(2, dim=1)
        w = self.conv1d.weight.squeeze(1)
        u = causal_conv1d_fn(x, w, self.conv1d.bias, "silu")
        x_dbl = self.x_proj(u.transpose(1, 2))  # (b, l, r + 2n)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.state_size, self.state_size], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)
        assert dt.shape[-1] == l
        return u, z, dt, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()

    def forward(self, hidden: Tensor, cache: RecurrentCache | None = None) -> Tensor:
        if cache is not None and cache.offset > 0:
            return self.step(hidden, cache)
        u, z, dt, B, C = self.ssm_inputs(hidden)
        A = -torch.exp(self.A_log.float())
        if self.stats is not None:
            delta = F.softplus(dt.float() + self.dt_proj.bias.float()[:, None], threshold=20.0)
            self.stats.update(u=u.float(), delta=delta, A=A, B=B.float(), C=C.float())
        if cache is None:
            y = selective_scan_fn(u, dt, A, B, C, self.D.float(), z, self.dt_proj.bias.float(), delta_softplus=True)
            return self.out_proj(y.transpose(1, 2))
        # prefill: also keep the last conv inputs and the final SSM state
        y, last = selective_scan_fn(
            u, dt, A, B, C, self.D.float(), z, self.dt_proj.bias.float(), delta_softplus=True, return_last_state=True
        )
        x = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)[0]
        cache.keep_conv_inputs(self.layer_idx, x, self.conv1d.weight.shape[-1])
        cache.ssm[self.layer_idx] = last.float().contiguous()
        return self.out_proj(y.transpose(1, 2))

    def step(self, hidden: Tensor, cache: RecurrentCache) -> Tensor:
        """One decoding token: hidden (b, 1, H); the layer's conv and SSM states advance in place."""
        x, z = self.in_proj(hidden[:, 0]).chunk(2, dim=-1)
        u = causal_conv1d_update(x, cache.conv[self.layer_idx], self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu")
        dt, B, C = torch.split(self.x_proj(u), [self.dt_rank, self.state_size, self.state_size], dim=-1)
        dt = dt @ self.dt_proj.weight.t()
        A = -torch.exp(self.A_log.float())
        y = selective_state_update(
            cache.ssm[self.layer_idx],
            u,
            dt,
            A,
            B,
            C,
            self.D.float(),
            z,
            dt_bias=self.dt_proj.bias.float(),
            dt_softplus=True,
        )
        return self.out_proj(y).unsqueeze(1)

    # --- compressible-layer protocol -------------------------------------------------------
    def start_stats(self):
        from ..reduction.mamba import MambaStats

        self.stats = MambaStats(self.d_inner, self.state_size)

    def energy(self, stats: dict | None, method: str) -> Tensor:
        from ..reduction.mamba import mamba_energy

        if stats is None:
            raise ValueError(f"layer {self.layer_idx}: Mamba energy needs calibration statistics")
        return mamba_energy(stats, method, layer=f"layers.{self.layer_idx}")

    @torch.no_grad()
    def truncate_(self, keep: Tensor) -> dict:
        """Keep states ``keep``: slice A_log's columns and x_proj's B and C rows together.

        A stays diagonal and B, C are shared by all channels, so this is an exact selection of
        modes; Adam moments are sliced with the same indices."""
        n, r = self.state_size, self.dt_rank
        keep = torch.as_tensor(keep, dtype=torch.long, device=self.A_log.device)
        if keep.numel() < 1 or keep.min() < 0 or keep.max() >= n or keep.unique().numel() != keep.numel():
            raise ValueError(
                f"layer {self.layer_idx}: keep must hold distinct indices in [0, {n}), got {keep.tolist()}"
            )
        if keep.numel() == n and (keep == torch.arange(n, device=keep.device)).all():
            return {}
        rows = torch.cat([torch.arange(r, device=keep.device), r + keep, r + n + keep])
        self.A_log = nn.Parameter(self.A_log[:, keep].clone())
        self.x_proj.weight = nn.Parameter(self.x_proj.weight[rows].clone())
        self.x_proj.out_features = rows.numel()
        self.state_size = keep.numel()
        set_state_sizes(self.config, [self.state_size], layer=self.layer_idx)
        keep_c, rows_c = keep.cpu(), rows.cpu()
        return {"A_log": lambda t: t[:, keep_c.to(t.device)], "x_proj.weight": lambda t: t[rows_c.to(t.device)]}

    def padded(self, n_max: int) -> dict[str, Tensor]:
        """A_log and x_proj zero-padded to ``n_max`` states (for export to one shared N): the
        padded states' B rows are zero, so they never leave zero and the output is unchanged."""
        n, r = self.state_size, self.dt_rank
        A, W = self.A_log.detach(), self.x_proj.weight.detach()
        zA, zW = A.new_zeros(A.shape[0], n_max - n), W.new_zeros(n_max - n, W.shape[1])
        return {
            "A_log": torch.cat([A, zA], dim=1),
            "x_proj.weight": torch.cat([W[:r], W[r : r + n], zW, W[r + n :], zW], dim=0),
        }




class CompressMambaForCausalLM(SSMForCausalLM):
    """Mamba-1 LM with per-layer state sizes; ``forward(input_ids, labels)`` → ``.loss``, ``.logits``."""

    config_class = CompressMambaConfig
    mixer_cls = MambaMixer



@dataclass
class MambaClassifierOutput(ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None


class MambaClassifier(nn.Module):
    """Mamba blocks over a linear encoder (float features (B, L, F)) or a token embedding
    (ids (B, L)), final RMSNorm, mean pooling over the valid positions, a linear head — the
    paper's Mamba rows on sCIFAR and IMDB. Same mixers, protocol and per-layer sizes as the LM."""

    _no_split_modules = ["Block"]  # FSDP2 shards, and activation checkpointing recomputes, per block

    def __init__(self, config, n_classes: int, d_input: int | None = None, mixer_cls: type[nn.Module] | None = None):
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.encoder = nn.Linear(d_input, h) if d_input else nn.Embedding(config.vocab_size, h)
        self.layers = blocks(config, mixer_cls or MambaMixer)
        self.norm_f = RMSNorm(h, config.layer_norm_epsilon)
        self.head = nn.Linear(h, n_classes)
        for m in self.modules():
            init_weights(m, config)

    def forward(self, inputs: Tensor, labels: Tensor | None = None, lengths: Tensor | None = None, **_):
        h = self.encoder(inputs)
        for layer in self.layers:
            h = layer(h)
        h = self.norm_f(h)
        logits = self.head(masked_mean(h, lengths)).float()
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return MambaClassifierOutput(loss=loss, logits=logits)

    def ssm_layers(self) -> list[MambaMixer]:
        return [layer.mixer for layer in self.layers]

    @property
    def state_sizes(self) -> list[int]:
        return [m.state_size for m in self.ssm_layers()]


def build_mamba(
    d_model: int = 256,
    n_layers: int = 4,
    state_size: int | list[int] = 16,
    state_sizes: list[int] | None = None,
    vocab_size: int = 256,
    expand: int = 2,
    d_conv: int = 4,
    tie_word_embeddings: bool = True,
    residual_in_fp32: bool = True,
    conv_bias: bool = True,
    bias: bool = False,
    dt_rank: int | str = "auto",
    pad_vocab_size_multiple: int = 1,
    pretrained: str | None = None,
    n_classes: int | None = None,
    d_input: int | None = None,
    pair: bool = False,
    **_info,
) -> CompressMambaForCausalLM | MambaClassifier:
    """Build a Mamba LM from recipe keys; ``state_sizes`` (one per layer) overrides ``state_size``
    (an int, or a list of one size per layer). Keys it does not know (data ``info``) are ignored.
    With ``n_classes`` (a classification dataset) it builds a :class:`MambaClassifier`. ``pretrained``
    (a model folder or hub id) loads that LM instead, cut to ``state_sizes`` when given (a resumed run)."""
    if pair:
        raise ValueError("model 'mamba' has no dual-encoder head for retrieval pairs; use model.name=lru")
    if pretrained:
        return cut_to_sizes_(CompressMambaForCausalLM.from_pretrained(pretrained), state_sizes)
    state_sizes = per_layer_sizes(state_size, state_sizes, n_layers)
    cfg = CompressMambaConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        state_sizes=list(state_sizes),
        expand=expand,
        conv_kernel=d_conv,
        tie_word_embeddings=tie_word_embeddings,
        residual_in_fp32=residual_in_fp32,
        use_conv_bias=conv_bias,
        use_bias=bias,
        time_step_rank=dt_rank,
        pad_vocab_size_multiple=pad_vocab_size_multiple,
    )
    if n_classes is not None:
        return MambaClassifier(cfg, n_classes, d_input=d_input)
    return CompressMambaForCausalLM(cfg)


def _from_mamba_ssm(ssm: dict, shared: dict) -> CompressMambaConfig:
    """mamba-ssm's ``ssm_cfg`` of a ``Mamba1`` layer (and the fields every layer type shares) → ours."""
    return CompressMambaConfig(state_size=ssm.get("d_state", 16), time_step_rank=ssm.get("dt_rank", "auto"), **shared)


FAMILY = register_family(
    ModelFamily(
        name="mamba",
        build=build_mamba,
        energy_methods=tuple(ENERGY_METHODS),
        # the winner of eval/mamba_ablation.py (docs/results.md): exact per-state output energy
        default_energy_method="output",
        causal_lm=CompressMambaForCausalLM,
        model_types=("compressmamba", "mamba"),
        mamba_ssm_layer="Mamba1",
        from_mamba_ssm=_from_mamba_ssm,
        transformers_export=("MambaConfig", "MambaForCausalLM", MAMBA_SHARED_FIELDS),
        description="Mamba-1 (selective scan), per-layer N",
    )
)
