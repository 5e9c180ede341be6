"""compressmamba's mixers inside transformers' Mamba models (models/hybrid.py): how a stock
Mamba-2 or Mamba-1 mixer is recognised (by its parts, no family's private class is named), our
per-layer-N mixers that take its place holding the same tensors and answer the call
transformers' decoder layers make (its cache, its padding mask), and the take-over of a whole
model. docs/hybrids.md says what each family's options are and why the exports are exact."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kernels import (
    causal_conv1d_fn,
    causal_conv1d_update,
    selective_scan_fn,
    selective_state_update,
    ssd_scan_fn,
    ssd_state_update,
)
from .lm import set_state_sizes
from .mamba import CompressMambaConfig, MambaMixer
from .mamba2 import BCProjection, CompressMamba2Config, Mamba2Mixer

_GEOMETRY = ("num_heads", "head_dim", "n_groups", "ssm_state_size", "intermediate_size", "chunk_size", "layer_idx")
_PARAMS = ("in_proj", "conv1d", "out_proj", "A_log", "dt_bias", "D", "norm")


def is_stock_mamba2_mixer(module: nn.Module) -> bool:
    """A transformers Mamba-2 mixer of any family (recognised by its parts, not its class)."""
    if isinstance(module, HybridMamba2Mixer):
        return False
    if not all(hasattr(module, a) for a in _GEOMETRY + _PARAMS + ("time_step_limit",)):
        return False
    return isinstance(module.A_log, nn.Parameter) and module.A_log.dim() == 1


def _call_args(hidden_states: Tensor, cache, attention_mask: Tensor | None, kwargs: dict):
    """What a decoder layer passes a mixer: the cache (``cache=``, or ``cache_params=`` before
    transformers 5.24), the padding mask (b, l, 1) when given as (b, l), and the hidden states
    with padded positions zeroed, as the stock mixers zero them."""
    cache = cache if cache is not None else kwargs.get("cache_params")
    mask = attention_mask[:, :, None] if attention_mask is not None and attention_mask.dim() == 2 else None
    if mask is not None:
        hidden_states = (hidden_states * mask).to(hidden_states.dtype)
    return cache, mask, hidden_states


def _twin(cls, stock: nn.Module, config, parts: tuple[str, ...]) -> nn.Module:
    """Our mixer ``cls`` for ``stock``'s layer, built on the meta device, holding ``stock``'s
    ``parts`` (the same modules and tensors)."""
    if getattr(stock, "activation", "silu") != "silu":
        raise ValueError(
            f"layer {stock.layer_idx}: the mixer's conv activation is {stock.activation!r}; "
            "compressmamba's Mamba kernels apply SiLU"
        )
    with torch.device("meta"):
        ours = cls(config, stock.layer_idx)
    for name in parts:
        setattr(ours, name, getattr(stock, name))
    return ours


class HybridMamba2Mixer(Mamba2Mixer):
    """compressmamba's Mamba-2 mixer (per-layer N, the protocol, this project's kernels) behind
    the call transformers' hybrid decoder layers make: ``mixer(hidden_states, cache=...,
    attention_mask=...)`` (``cache_params=`` before 5.24), reading and writing the layer's conv and
    recurrent states in transformers' cache."""

    @classmethod
    def from_stock(cls, stock: nn.Module, config: CompressMamba2Config, hf_config=None) -> HybridMamba2Mixer:
        """Take over ``stock``'s parameters (the same tensors, not copies); ``hf_config`` is the
        model's transformers config."""
        ours = _twin(cls, stock, config, ("in_proj", "conv1d", "out_proj", "A_log", "dt_bias", "D"))
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
    _mup: tuple | None = None  # (bc width, device, dtype) → the multiplier vector in_proj's output takes

    def _project(self, hidden: Tensor) -> Tensor:
        """in_proj, with Falcon-H1's multipliers (per segment of [z | x | B | C | dt], whatever
        the layer's N is now)."""
        if self.in_multiplier != 1.0:
            hidden = hidden * self.in_multiplier
        zxbcdt = self.in_proj(hidden)
        if self.segment_multipliers is None:
            return zxbcdt
        key = (self.bc_width, zxbcdt.device, zxbcdt.dtype)
        if self._mup is None or self._mup[0] != key:  # built once per width (a cut changes it), not per step
            gn = self.n_groups * self.bc_width
            widths = (self.d_inner, self.d_inner, gn, gn, self.n_heads)
            mup = torch.cat([torch.full((w,), m) for w, m in zip(widths, self.segment_multipliers)])
            self._mup = (key, mup.to(device=zxbcdt.device, dtype=zxbcdt.dtype))
        return zxbcdt * self._mup[1]

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
                self._empty_bc_(width)
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

    def stock_tensors(self, n_out: int, uniform: bool) -> dict[str, Tensor]:
        """in_proj and conv1d in the stock family at N = ``n_out`` (zero-padded inside each group;
        nothing to pad at a uniform N)."""
        return self.padded(n_out)

    def forward(self, hidden_states: Tensor, cache=None, attention_mask: Tensor | None = None, **kwargs) -> Tensor:
        cache, mask, hidden_states = _call_args(hidden_states, cache, attention_mask, kwargs)
        dtype = hidden_states.dtype
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


def is_stock_mamba_mixer(module: nn.Module) -> bool:
    """A transformers Mamba-1 mixer of any family (A_log (d_inner, N), x_proj, dt_proj)."""
    if isinstance(module, HybridMambaMixer):
        return False
    parts = ("in_proj", "conv1d", "x_proj", "dt_proj", "out_proj", "A_log", "D", "layer_idx", "ssm_state_size")
    if not all(hasattr(module, a) for a in parts):
        return False
    return isinstance(module.A_log, nn.Parameter) and module.A_log.dim() == 2


class HybridMambaMixer(MambaMixer):
    """compressmamba's Mamba-1 mixer behind transformers' call, for Jamba and Falcon-Mamba: their
    RMSNorms of Δ (over the rank), B and C (over N) are the stock modules themselves. B and C are
    normalised as the stock layer at its original N would normalise them with the cut states at
    zero (zero-padded to ``norm_states`` before the norm): before any cut the layer is the stock
    one, and the zero-padded export at the original N is exact after any cut."""

    norm_states: int = 0
    _NORMS = ("dt_layernorm", "b_layernorm", "c_layernorm")

    @classmethod
    def from_stock(cls, stock: nn.Module, config: CompressMambaConfig, hf_config=None) -> HybridMambaMixer:
        parts = ("in_proj", "conv1d", "x_proj", "dt_proj", "A_log", "D", "out_proj", *cls._NORMS)
        ours = _twin(cls, stock, config, tuple(p for p in parts if hasattr(stock, p)))
        ours.norm_states = stock.ssm_state_size
        return ours

    def _norm_states(self, name: str, t: Tensor) -> Tensor:
        norm = getattr(self, name, None)
        if norm is None:
            return t
        n = t.shape[-1]
        return norm(F.pad(t, (0, self.norm_states - n)))[..., :n]

    def _dt_b_c(self, u: Tensor):
        """u (b, l, d) after the conv → Δ before its bias (b, l, d), B, C (b, l, N), normalised."""
        dt, B, C = torch.split(self.x_proj(u), [self.dt_rank, self.state_size, self.state_size], dim=-1)
        if getattr(self, "dt_layernorm", None) is not None:
            dt = self.dt_layernorm(dt)
        B, C = self._norm_states("b_layernorm", B), self._norm_states("c_layernorm", C)
        return dt @ self.dt_proj.weight.t(), B, C

    def forward(self, hidden_states: Tensor, cache=None, attention_mask: Tensor | None = None, **kwargs) -> Tensor:
        cache, mask, hidden_states = _call_args(hidden_states, cache, attention_mask, kwargs)
        dtype = hidden_states.dtype
        x, z = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)  # (b, d, l)
        weight, k = self.conv1d.weight.squeeze(1), self.conv1d.weight.shape[-1]
        A = -torch.exp(self.A_log.float())
        bias = self.dt_proj.bias.float()
        previous = cache.get_conv_state(self.layer_idx) if cache is not None else None
        if previous is not None:
            if x.shape[-1] != 1:
                raise NotImplementedError(
                    "several new tokens on top of a cached state (chunked prefill, assisted or speculative "
                    "decoding) are not supported by compressmamba's hybrid mixers; generate one token at a time"
                )
            u = causal_conv1d_update(x[:, :, 0], previous.clone(), weight, self.conv1d.bias, "silu")
            cache.update_conv_state(x, self.layer_idx, conv_kernel_size=k)
            dt, B, C = self._dt_b_c(u[:, None])
            state = cache.get_recurrent_state(self.layer_idx).clone()
            y = selective_state_update(
                state, u, dt[:, 0], A, B[:, 0], C[:, 0], self.D.float(), z[:, :, 0], dt_bias=bias, dt_softplus=True
            )
            cache.update_recurrent_state(state, self.layer_idx)
            return self.out_proj(y.unsqueeze(1).to(dtype))
        if cache is not None:
            cache.update_conv_state(x, self.layer_idx, conv_kernel_size=k)
        u = causal_conv1d_fn(x, weight, self.conv1d.bias, "silu")
        if mask is not None:
            u = (u * mask.transpose(1, 2)).to(u.dtype)
        dt, B, C = self._dt_b_c(u.transpose(1, 2))
        dt, B, C = dt.transpose(1, 2), B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()
        if self.stats is not None:
            delta = F.softplus(dt.float() + bias[:, None], threshold=20.0)
            self.stats.update(u=u.float(), delta=delta, A=A, B=B.float(), C=C.float())
        y = selective_scan_fn(
            u, dt, A, B, C, self.D.float(), z, bias, delta_softplus=True, return_last_state=cache is not None
        )
        if cache is not None:
            y, last = y
            cache.update_recurrent_state(last.contiguous(), self.layer_idx)
        return self.out_proj(y.transpose(1, 2).to(dtype))

    @torch.no_grad()
    def truncate_(self, keep) -> dict:
        """Mamba-1's selection (A_log columns, x_proj's B and C rows), and the B and C norms'
        weights reordered to match: the kept states first, the free slots after (they scale
        zeros)."""
        maps = super().truncate_(keep)
        if not maps:
            return maps
        keep = torch.as_tensor(keep, dtype=torch.long).cpu()
        rest = torch.tensor([i for i in range(self.norm_states) if i not in set(keep.tolist())], dtype=torch.long)
        order = torch.cat([keep, rest])
        for name in ("b_layernorm", "c_layernorm"):
            norm = getattr(self, name, None)
            if norm is not None and isinstance(norm.weight, nn.Parameter):
                norm.weight = nn.Parameter(norm.weight[order.to(norm.weight.device)].clone())
                maps[f"{name}.weight"] = lambda t, o=order: t[o.to(t.device)]
        return maps

    @torch.no_grad()
    def resize_(self, r: int, n_in: int | None = None) -> None:
        if n_in:
            raise ValueError(f"layer {self.layer_idx}: a Mamba-1 layer has no balanced state projection (bc_proj_in)")
        if r >= self.state_size:
            return
        if self.A_log.device.type != "meta":
            self.truncate_(torch.arange(r))
            return
        rank = self.dt_rank
        self.A_log = nn.Parameter(self.A_log.new_empty(self.d_inner, r))
        self.x_proj.weight = nn.Parameter(self.x_proj.weight.new_empty(rank + 2 * r, self.d_inner))
        self.x_proj.out_features = rank + 2 * r
        self.state_size = r
        set_state_sizes(self.config, [r], layer=self.layer_idx)

    def stock_tensors(self, n_out: int, uniform: bool) -> dict[str, Tensor]:
        """The layer's tensors in the stock family at N = ``n_out``: zero-padded (exact), or with
        ``uniform`` at its own N, where the stock B and C norms average over that N instead of
        the original: the norms' weights are rescaled by sqrt(N_orig / N), exact but for the
        norms' eps (Jamba); norms without weights cannot be rescaled (Falcon-Mamba)."""
        if not uniform:
            if n_out != self.norm_states and getattr(self, "b_layernorm", None) is not None:
                raise ValueError(f"layer {self.layer_idx}: its B/C norms average over N = {self.norm_states}")
            return self.padded(n_out)
        out, n = {}, self.state_size
        for name in ("b_layernorm", "c_layernorm"):
            norm = getattr(self, name, None)
            if norm is None or n == self.norm_states:
                continue
            if not isinstance(norm.weight, nn.Parameter):
                raise ValueError(
                    f"layer {self.layer_idx}: its {name} has no weights (Falcon-Mamba), so a stock config at "
                    f"N = {n} < {self.norm_states} would rescale B and C; export it zero-padded "
                    "(convert --to transformers without --uniform: exact) or keep our format"
                )
            out[f"{name}.weight"] = norm.weight.detach()[:n] * math.sqrt(self.norm_states / n)
        return out


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


def is_stock_mixer(module: nn.Module) -> bool:
    """A transformers Mamba-2 or Mamba-1 mixer of any family."""
    return is_stock_mamba2_mixer(module) or is_stock_mamba_mixer(module)


def _mamba_config(model: nn.Module, stock: nn.Module) -> CompressMambaConfig:
    """One Mamba-1 config for every SSM layer of ``model``, read off a stock mixer."""
    return CompressMambaConfig(
        vocab_size=1,
        hidden_size=stock.in_proj.in_features,
        num_hidden_layers=model.config.num_hidden_layers,
        state_size=stock.ssm_state_size,
        intermediate_size=stock.in_proj.out_features // 2,
        conv_kernel=stock.conv1d.weight.shape[-1],
        time_step_rank=stock.dt_proj.in_features,
        use_bias=stock.in_proj.bias is not None,
        use_conv_bias=stock.conv1d.bias is not None,
    )


_KINDS = (
    (is_stock_mamba2_mixer, _mixer_config, HybridMamba2Mixer),
    (is_stock_mamba_mixer, _mamba_config, HybridMambaMixer),
)


@torch.no_grad()
def take_over_mixers_(model: nn.Module, state_sizes=None, bc_proj_in=None) -> list[nn.Module]:
    """Replace every stock Mamba-2 or Mamba-1 mixer of ``model`` by compressmamba's
    (:class:`HybridMamba2Mixer`, :class:`HybridMambaMixer`: the same parameters; mixers taken over
    already stay), then cut layer i to ``state_sizes[i]`` (the first states of each group: the
    shapes a checkpoint of a cut model is loaded into) with a ``bc_proj`` from ``bc_proj_in[i]``
    where given. Returns the mixers in layer order."""
    for is_kind, make_config, cls in _KINDS:
        stock = [(name, m) for name, m in model.named_modules() if is_kind(m)]
        if stock:
            config = make_config(model, stock[0][1])
            for name, m in stock:
                parent_name, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent_name), attr, cls.from_stock(m, config, model.config))
    mixers = ssm_mixers(model)
    if not mixers:
        raise ValueError(f"{type(model).__name__} has no Mamba mixer to take over")
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


def ssm_mixers(model: nn.Module) -> list[nn.Module]:
    kinds = (HybridMamba2Mixer, HybridMambaMixer)
    return sorted((m for m in model.modules() if isinstance(m, kinds)), key=lambda m: m.layer_idx)
