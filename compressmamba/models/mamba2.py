"""Mamba-2 (SSD) language model with one state size per layer (transformers-compatible weights).

Weight names follow transformers' ``Mamba2ForCausalLM``: ``backbone.layers.{i}.mixer.{in_proj,
conv1d, dt_bias, A_log, D, norm, out_proj}`` beside the shared ``backbone.embeddings``,
``backbone.layers.{i}.norm``, ``backbone.norm_f`` and ``lm_head`` (models/lm.py).

Per layer (docs/design.md, "Mamba-2: per-group selection and balanced truncation"):
in_proj(u) → z (D_in), xBC (D_in + 2·G·N), dt (H); depthwise causal conv over xBC, SiLU;
x → H heads × P; B_t, C_t ∈ R^{G×N} (head h reads group h·G/H); Δ = softplus(dt + dt_bias)
clamped to ``time_step_limit``; A = −exp(A_log) (H,); h_t = exp(Δ A) h_{t−1} + Δ x_t ⊗ B_t;
y_t = h_t C_t + D x_t; y ← RMSNorm_g(y · SiLU(z)) (per group of D_in / G channels); out_proj.

After a balanced cut (``reduction.method: balanced``) a layer also carries ``mixer.bc_proj.{B, C}``
(G, r, N_in): B_t, C_t (G, N_in) out of the conv and SiLU are projected to B̂_t = W_B B_t,
Ĉ_t = W_C C_t (G, r) before the scan, so the state is r-dimensional while in_proj and conv1d keep
N_in per group (config ``bc_proj_in``). A layer without a balanced cut has no such tensors.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .. import compat
from ..kernels import causal_conv1d_fn, causal_conv1d_update, ssd_scan_fn, ssd_state_update
from ..reduction.mamba import ENERGY_METHODS
from ..registry import ModelFamily, register_family
from .common import cut_to_sizes_, per_layer_sizes
from .lm import MixerBase, RecurrentCache, SSMForCausalLM, set_shared_config_fields, set_state_sizes
from .loading import MAMBA_SHARED_FIELDS


class CompressMamba2Config(compat.PreTrainedConfig):
    """transformers' Mamba2Config fields plus ``state_sizes`` (one N per layer).

    mamba-ssm's names are accepted as aliases (``d_model``, ``n_layer``, ``d_conv``, ``headdim``,
    ``ngroups``, ``rms_norm_eps``); ``num_heads`` defaults to expand·hidden_size / head_dim."""

    model_type = "compressmamba2"
    attribute_map = {
        "d_model": "hidden_size",
        "n_layer": "num_hidden_layers",
        "d_conv": "conv_kernel",
        "headdim": "head_dim",
        "ngroups": "n_groups",
        "rms_norm_eps": "layer_norm_epsilon",
    }

    def __init__(
        self,
        vocab_size: int = 50280,
        hidden_size: int = 768,
        state_size: int = 128,
        state_sizes: list[int] | None = None,
        num_hidden_layers: int = 24,
        num_heads: int | None = None,
        head_dim: int = 64,
        expand: int = 2,
        n_groups: int = 1,
        conv_kernel: int = 4,
        use_bias: bool = False,
        use_conv_bias: bool = True,
        hidden_act: str = "silu",
        layer_norm_epsilon: float = 1e-5,
        residual_in_fp32: bool = True,
        initializer_range: float = 0.1,
        time_step_rank: int | str = "auto",
        time_step_min: float = 0.001,
        time_step_max: float = 0.1,
        time_step_floor: float = 1e-4,
        time_step_limit=(0.0, float("inf")),
        rescale_prenorm_residual: bool = False,
        chunk_size: int = 256,
        tie_word_embeddings: bool = True,
        pad_vocab_size_multiple: int = 1,
        pad_token_id: int = 0,
        bos_token_id: int = 0,
        eos_token_id: int = 0,
        use_cache: bool = True,
        bc_proj_in: list[int | None] | None = None,
        intermediate_size: int | None = None,
        **kwargs,
    ):
        alias = {name: kwargs.pop(a) for a, name in self.attribute_map.items() if a in kwargs}
        set_shared_config_fields(self, locals(), alias)
        head_dim = self.head_dim = int(alias.get("head_dim", head_dim))
        # d_inner: expand·hidden_size unless given (hybrids whose d_inner is heads·head_dim)
        self.intermediate_size = int(intermediate_size) if intermediate_size else int(expand * self.hidden_size)
        self.num_heads = int(num_heads) if num_heads is not None else self.intermediate_size // head_dim
        if self.num_heads * head_dim != self.intermediate_size:
            raise ValueError(
                f"num_heads * head_dim ({self.num_heads} * {head_dim}) must equal expand * hidden_size "
                f"({self.intermediate_size})"
            )
        self.n_groups = int(alias.get("n_groups", n_groups))
        if self.n_groups < 1 or self.num_heads % self.n_groups:
            raise ValueError(f"n_groups={self.n_groups} must be >= 1 and divide num_heads={self.num_heads}")
        if hidden_act != "silu":
            raise ValueError(f"hidden_act must be 'silu' (Mamba-2's conv activation), got {hidden_act!r}")
        self.hidden_act = hidden_act
        self.bc_proj_in = _projection_widths(bc_proj_in, self.state_sizes)
        self.time_step_limit = tuple(compat.config_float(v) for v in time_step_limit)
        self.chunk_size = int(chunk_size)
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )


def _projection_widths(widths, sizes: list[int]) -> list[int | None] | None:
    """``bc_proj_in``: per layer None (no state projection) or the width N_in >= that layer's
    state size of B_t and C_t before the projection; None when no layer has one."""
    if widths is None:
        return None
    widths = [None if w is None else int(w) for w in widths]
    if len(widths) != len(sizes) or any(w is not None and w < n for w, n in zip(widths, sizes)):
        raise ValueError(
            f"bc_proj_in {widths} must hold one entry per layer ({len(sizes)}), each null or >= "
            f"that layer's state size {sizes}"
        )
    return widths


class BCProjection(nn.Module):
    """The balanced cut's per-group state projections B (G, r, N_in) and C (G, r, N_in):
    B_t, C_t (..., G, N_in) → (..., G, r). A change of basis, so not weight-decayed."""

    no_weight_decay_params = ("B", "C")

    def __init__(self, groups: int, r: int, n_in: int):
        super().__init__()
        eye = torch.eye(r, n_in).expand(groups, r, n_in)  # the leading r raw states until set
        self.B, self.C = nn.Parameter(eye.clone()), nn.Parameter(eye.clone())

    def forward(self, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
        return (torch.einsum("...gn,grn->...gr", t, w.to(t.dtype)) for t, w in ((B, self.B), (C, self.C)))


class GatedRMSNorm(nn.Module):
    """RMSNorm(y · SiLU(z)) over groups of ``group_size`` channels (mamba-ssm's RMSNormGated with
    norm_before_gate=False), computed in fp32; with ``norm_before_gate`` RMSNorm(y) · SiLU(z)
    (Falcon-H1's option)."""

    def __init__(self, d: int, group_size: int, eps: float = 1e-5, norm_before_gate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.group_size, self.eps, self.norm_before_gate = group_size, eps, norm_before_gate

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        gate = F.silu(z.float())
        h = y.float() if self.norm_before_gate else y.float() * gate
        g = h.unflatten(-1, (-1, self.group_size))
        h = (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2)
        if self.norm_before_gate:
            return (self.weight.float() * h * gate).to(y.dtype)
        return self.weight * h.to(y.dtype)


class Mamba2Mixer(MixerBase):
    """in_proj → (z, xBC, dt); causal conv1d + SiLU over xBC; SSD scan (D skip); gated RMSNorm;
    out_proj. Implements the compressible-layer protocol with G groups of N states: energies are
    (G, N) and ``truncate_`` keeps the same count in every group. ``energy(stats, "balanced")``
    returns each group's Hankel singular values and makes the next ``truncate_`` keep balanced
    coordinates (a state projection, ``bc_proj``); any other method means state selection."""

    needs_calibration = True
    no_weight_decay_params = ("A_log", "D", "dt_bias")
    ssm_params = ("A_log",)

    def __init__(self, config: CompressMamba2Config, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        h, di, k = config.hidden_size, config.intermediate_size, config.conv_kernel
        self.n_heads, self.head_dim, self.n_groups = config.num_heads, config.head_dim, config.n_groups
        n = self.state_size = config.state_sizes[layer_idx]
        n_in = (config.bc_proj_in or [None] * config.num_hidden_layers)[layer_idx]
        self.bc_width = n_in or n  # width of each group's B_t, C_t out of in_proj and the conv
        self.d_inner = di
        conv_dim = di + 2 * self.n_groups * self.bc_width
        self.in_proj = nn.Linear(h, di + conv_dim + self.n_heads, bias=config.use_bias)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, k, groups=conv_dim, padding=k - 1, bias=config.use_conv_bias)
        self.dt_bias = nn.Parameter(torch.zeros(self.n_heads))
        self.A_log = nn.Parameter(torch.zeros(self.n_heads))
        self.D = nn.Parameter(torch.ones(self.n_heads))
        self.norm = GatedRMSNorm(di, di // self.n_groups, config.layer_norm_epsilon)
        self.out_proj = nn.Linear(di, h, bias=config.use_bias)
        self.bc_proj = BCProjection(self.n_groups, n, n_in) if n_in else None
        self.stats = None
        self._balancing = None  # (sigma, T, Tinv) of the last energy(stats, "balanced")

    @torch.no_grad()
    def reset_parameters(self, where=lambda t: True):
        """mamba-ssm's initialisation (Δ log-uniform in [dt_min, dt_max], A ∈ U[1, 16], D = 1,
        out_proj rescaled by the depth when ``rescale_prenorm_residual``), of each tensor for
        which ``where`` holds."""
        c = self.config
        if where(self.dt_bias):
            self.dt_bias.copy_(self.initial_dt_bias(self.n_heads, c))
        if where(self.A_log):
            self.A_log.copy_(torch.log(torch.empty(self.n_heads).uniform_(1, 16)))
        if where(self.D):
            self.D.fill_(1.0)
        if where(self.norm.weight):
            self.norm.weight.fill_(1.0)
        for w in (self.bc_proj.B, self.bc_proj.C) if self.bc_proj is not None else ():
            if where(w):
                w.copy_(torch.eye(*w.shape[1:]).expand_as(w))
        self.rescale_out_proj(where)

    def _split(self, zxbcdt: Tensor):
        gn = self.n_groups * self.bc_width
        return torch.split(zxbcdt, [self.d_inner, self.d_inner + 2 * gn, self.n_heads], dim=-1)

    def _ssm_args(self, xBC: Tensor, dt: Tensor):
        """xBC (..., D_in + 2G·N_in) after the conv, dt (..., H) → x (..., H, P), B, C (..., G, N)
        (projected from N_in when the layer has ``bc_proj``), Δ (..., H)."""
        gn = self.n_groups * self.bc_width
        x, B, C = torch.split(xBC, [self.d_inner, gn, gn], dim=-1)
        delta = F.softplus(dt.float() + self.dt_bias.float(), threshold=20.0).clamp(*self.config.time_step_limit)
        x = x.unflatten(-1, (self.n_heads, self.head_dim))
        B, C = (t.unflatten(-1, (self.n_groups, self.bc_width)) for t in (B, C))
        if self.bc_proj is not None:
            B, C = self.bc_proj(B, C)
        return x, B, C, delta

    def forward(self, hidden: Tensor, cache: RecurrentCache | None = None) -> Tensor:
        """hidden (b, l, H_model) → (b, l, H_model); fills ``cache`` when given (prefill)."""
        if cache is not None and cache.offset > 0:
            return self.step(hidden, cache)
        b, l, _ = hidden.shape
        z, xBC, dt = self._split(self.in_proj(hidden))
        xBC_t = xBC.transpose(1, 2)
        xBC = causal_conv1d_fn(xBC_t, self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu").transpose(1, 2)
        x, B, C, delta = self._ssm_args(xBC, dt)
        A = -torch.exp(self.A_log.float())
        if self.stats is not None:
            self.stats.update(x, delta, A, B, C)
        out = ssd_scan_fn(
            x, delta, A, B, C, self.config.chunk_size, D=self.D.float(), return_final_states=cache is not None
        )
        if cache is not None:
            out, last = out
            cache.keep_conv_inputs(self.layer_idx, xBC_t, self.conv1d.weight.shape[-1])
            cache.ssm[self.layer_idx] = last.float().contiguous()
        return self.out_proj(self.norm(out.reshape(b, l, self.d_inner), z))

    def step(self, hidden: Tensor, cache: RecurrentCache) -> Tensor:
        """One decoding token: hidden (b, 1, H_model); the layer's conv and SSM states advance in place."""
        z, xBC, dt = self._split(self.in_proj(hidden[:, 0]))
        conv = cache.conv[self.layer_idx]
        xBC = causal_conv1d_update(xBC, conv, self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu")
        x, B, C, delta = self._ssm_args(xBC, dt)
        A = -torch.exp(self.A_log.float())
        y = ssd_state_update(cache.ssm[self.layer_idx], x, delta, A, B, C, D=self.D.float())
        return self.out_proj(self.norm(y.reshape(y.shape[0], self.d_inner), z)).unsqueeze(1)

    # --- compressible-layer protocol -------------------------------------------------------
    def start_stats(self):
        from ..reduction.ssd import Mamba2Stats

        self.stats = Mamba2Stats(self.n_heads, self.head_dim, self.n_groups, self.state_size)

    def energy(self, stats: dict | None, method: str) -> Tensor:
        """Per-state energies (G, N) float64. ``balanced``: each group's Hankel singular values
        (descending, one per balanced coordinate), and the next ``truncate_`` keeps balanced
        coordinates; the other methods (reduction/mamba.py) score the states as they are."""
        from ..reduction.mamba import mamba_energy
        from ..reduction.ssd import balance_groups, group_gramians

        if stats is None:
            raise ValueError(f"layer {self.layer_idx}: Mamba-2 energy needs calibration statistics")
        where = f"layers.{self.layer_idx}"
        self._balancing = None
        if method != "balanced":
            return mamba_energy(stats, method, layer=where, groups=self.n_groups)
        P, Q = group_gramians(stats, self.head_dim, layer=where)
        if P.shape != (self.n_groups, self.state_size, self.state_size):
            raise ValueError(
                f"layer {where}: statistics are for Gramians {tuple(P.shape)}, the layer has "
                f"{self.n_groups} groups of {self.state_size} states"
            )
        self._balancing = balance_groups(P, Q, layer=where)
        return self._balancing[0].clone()

    def _check_keep(self, keep) -> Tensor:
        g, n = self.n_groups, self.state_size
        keep = torch.as_tensor(keep, dtype=torch.long, device=self.A_log.device)
        keep = keep.reshape(1, -1) if keep.dim() == 1 and g == 1 else keep
        bad = keep.dim() != 2 or keep.shape[0] != g or keep.shape[1] < 1
        if not bad:
            bad = keep.min() < 0 or keep.max() >= n or any(row.unique().numel() != row.numel() for row in keep)
        if bad:
            raise ValueError(
                f"layer {self.layer_idx}: keep must be ({g}, r) distinct state indices in [0, {n}) per group, "
                f"got {keep.tolist()}"
            )
        return torch.sort(keep, dim=1).values

    def padded(self, n_max: int) -> dict[str, Tensor]:
        """in_proj rows and conv1d channels with every group's B and C zero-padded to ``n_max``
        states (for export to one shared N): padded states get B = SiLU(0) = 0, so they stay at
        zero and the output is unchanged."""
        if self.bc_proj is not None:
            raise ValueError(
                f"layer {self.layer_idx} carries a balanced state projection (bc_proj: B_t, C_t projected "
                f"from {self.bc_width} to {self.state_size} states after the conv's SiLU), which "
                "transformers' Mamba2 cannot express; save the model with save_pretrained (our format) "
                "instead, or cut it with a selection method (output, hankel, hankel_mean)"
            )
        g, n, di = self.n_groups, self.state_size, self.d_inner
        out = {"in_proj.weight": _pad_groups(self.in_proj.weight.detach(), 2 * di, g, n, n_max)}
        if self.in_proj.bias is not None:
            out["in_proj.bias"] = _pad_groups(self.in_proj.bias.detach(), 2 * di, g, n, n_max)
        out["conv1d.weight"] = _pad_groups(self.conv1d.weight.detach(), di, g, n, n_max)
        if self.conv1d.bias is not None:
            out["conv1d.bias"] = _pad_groups(self.conv1d.bias.detach(), di, g, n, n_max)
        return out

    @torch.no_grad()
    def truncate_(self, keep) -> dict:
        """Keep states ``keep`` ((G, r) indices, or (r,) when G = 1) of every group.

        After ``energy(stats, "balanced")`` the indices are balanced coordinates: the layer gets
        (or composes) the state projection onto them (:meth:`project_states_`). Otherwise it is
        an exact selection of modes (each state of a group feeds only its own B, C channels):
        the B and C rows of in_proj and channels of conv1d, or the rows of ``bc_proj`` when the
        layer already has one, are sliced, and so are their Adam moments."""
        keep = self._check_keep(keep)
        basis, self._balancing = self._balancing, None
        if keep.shape[1] == self.state_size:
            return {}
        if basis is not None:
            from ..reduction.ssd import balanced_projections

            return self.project_states_(*balanced_projections(*basis, keep.cpu(), layer=str(self.layer_idx)))
        if self.bc_proj is not None:
            return self._select_projected_(keep)
        g, n, di, r = self.n_groups, self.state_size, self.d_inner, keep.shape[1]
        dev = keep.device
        states = (keep + n * torch.arange(g, device=dev)[:, None]).flatten()  # into the G·N block
        chans = torch.cat([torch.arange(di, device=dev), di + states, di + g * n + states])  # conv channels
        rows = torch.cat(
            [
                torch.arange(di, device=dev),
                di + chans,
                torch.arange(2 * di + 2 * g * n, 2 * di + 2 * g * n + self.n_heads, device=dev),
            ]
        )
        maps = {"in_proj.weight": rows, "conv1d.weight": chans}
        if self.in_proj.bias is not None:
            maps["in_proj.bias"] = rows
        if self.conv1d.bias is not None:
            maps["conv1d.bias"] = chans
        self._resize_bc_(lambda t, idx: t[idx], maps)
        self.bc_width = r
        self._set_state_size(r)
        return {name: _rows(idx) for name, idx in maps.items()}

    @torch.no_grad()
    def project_states_(self, W_B: Tensor, W_C: Tensor) -> dict:
        """Use B̂_t = W_B B_t, Ĉ_t = W_C C_t (W_B, W_C (G, r, N) in the current N states) from now
        on: a new ``bc_proj`` of width N_in = N, or the composition W · bc_proj with the one the
        layer has. The state becomes r-dimensional. Returns None state maps for ``bc_proj``: its
        rows are a new basis, so no optimizer moment carries over (in_proj and conv1d are kept
        as they are, with their moments)."""
        g, n = self.n_groups, self.state_size
        if W_B.shape != W_C.shape or W_B.dim() != 3 or W_B.shape[0] != g or W_B.shape[2] != n:
            raise ValueError(f"layer {self.layer_idx}: W_B, W_C must be ({g}, r, {n}), got {W_B.shape}, {W_C.shape}")
        r, ref = W_B.shape[1], self.in_proj.weight
        W_B, W_C = W_B.to(torch.float64), W_C.to(torch.float64)
        if self.bc_proj is not None:  # compose: the new basis is read off the projected states
            W_B, W_C = W_B @ self.bc_proj.B.double(), W_C @ self.bc_proj.C.double()
        proj = BCProjection(g, r, W_B.shape[2]).to(device=ref.device, dtype=ref.dtype)
        proj.B.copy_(W_B)
        proj.C.copy_(W_C)
        self.bc_proj = proj
        widths = self.config.bc_proj_in or [None] * self.config.num_hidden_layers
        widths[self.layer_idx] = self.bc_width
        self.config.bc_proj_in = widths
        self._set_state_size(r)
        return {"bc_proj.B": None, "bc_proj.C": None}

    def _select_projected_(self, keep: Tensor) -> dict:
        """Selection on a projected layer: keep rows ``keep`` (G, r) of bc_proj's B and C."""
        idx = keep.cpu()

        def pick(t: Tensor) -> Tensor:
            return t.gather(1, idx.to(t.device)[..., None].expand(-1, -1, t.shape[-1]))

        self.bc_proj.B, self.bc_proj.C = (nn.Parameter(pick(w).clone()) for w in (self.bc_proj.B, self.bc_proj.C))
        self._set_state_size(keep.shape[1])
        return {"bc_proj.B": pick, "bc_proj.C": pick}

    def _resize_bc_(self, make, maps: dict) -> None:
        """Replace in_proj's and conv1d's parameters named in ``maps`` by ``make(old, idx)``."""
        for name, idx in maps.items():
            mod, attr = name.split(".")
            module = getattr(self, mod)
            setattr(module, attr, nn.Parameter(make(getattr(module, attr), idx).clone()))
        self.in_proj.out_features = self.in_proj.weight.shape[0]
        self.conv1d.in_channels = self.conv1d.out_channels = self.conv1d.groups = self.conv1d.weight.shape[0]

    def _empty_bc_(self, width: int) -> None:
        """in_proj and conv1d reshaped (uninitialised) to a B/C width of ``width`` per group:
        the shapes a stored layer is loaded into."""
        conv_dim = self.d_inner + 2 * self.n_groups * width
        shapes = {
            "in_proj.weight": (conv_dim + self.d_inner + self.n_heads, self.in_proj.in_features),
            "conv1d.weight": (conv_dim, 1, self.conv1d.weight.shape[-1]),
        }
        if self.in_proj.bias is not None:
            shapes["in_proj.bias"] = shapes["in_proj.weight"][:1]
        if self.conv1d.bias is not None:
            shapes["conv1d.bias"] = (conv_dim,)
        self._resize_bc_(lambda t, shape: t.new_empty(shape), shapes)
        self.bc_width = width

    def _set_state_size(self, r: int) -> None:
        self.state_size = r
        set_state_sizes(self.config, [r], layer=self.layer_idx)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A state dict with ``bc_proj`` for a layer built without one (a training checkpoint
        rebuilt from its state sizes alone): take N_in from the stored projection and reshape
        in_proj, conv1d and bc_proj to it before loading."""
        stored = state_dict.get(prefix + "bc_proj.B")
        if stored is not None and self.bc_proj is None:
            g, r, n_in = stored.shape
            if g != self.n_groups or r != self.state_size or n_in < r:
                raise ValueError(
                    f"{prefix}bc_proj.B has shape {tuple(stored.shape)}; layer {self.layer_idx} has "
                    f"{self.n_groups} groups of {self.state_size} states"
                )
            self._empty_bc_(n_in)
            w = self.in_proj.weight
            self.bc_proj = BCProjection(g, r, n_in).to(device=w.device, dtype=w.dtype)
            widths = self.config.bc_proj_in or [None] * self.config.num_hidden_layers
            widths[self.layer_idx] = n_in
            self.config.bc_proj_in = widths
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _pad_groups(t: Tensor, start: int, g: int, n: int, n_max: int) -> Tensor:
    """Rows [start, start + 2·g·n) of ``t`` hold B then C, g groups of n: pad each group to n_max with zeros."""
    bc = t[start : start + 2 * g * n].unflatten(0, (2 * g, n))
    bc = torch.cat([bc, bc.new_zeros(2 * g, n_max - n, *bc.shape[2:])], dim=1).flatten(0, 1)
    return torch.cat([t[:start], bc, t[start + 2 * g * n :]])


def _rows(idx: Tensor):
    """State map: an optimizer moment of the old tensor → its rows ``idx``."""
    idx = idx.cpu()
    return lambda t: t[idx.to(t.device)]


class CompressMamba2ForCausalLM(SSMForCausalLM):
    """Mamba-2 LM with per-layer state sizes; ``forward(input_ids, labels)`` → ``.loss``, ``.logits``."""

    config_class = CompressMamba2Config
    mixer_cls = Mamba2Mixer



def build_mamba2(
    d_model: int = 256,
    n_layers: int = 4,
    state_size: int | list[int] = 64,
    state_sizes: list[int] | None = None,
    vocab_size: int = 256,
    expand: int = 2,
    head_dim: int = 32,
    n_groups: int = 1,
    d_conv: int = 4,
    chunk_size: int = 64,
    tie_word_embeddings: bool = True,
    residual_in_fp32: bool = True,
    pad_vocab_size_multiple: int = 1,
    pretrained: str | None = None,
    n_classes: int | None = None,
    d_input: int | None = None,
    pair: bool = False,
    bc_proj_in: list[int | None] | None = None,
    **_info,
):
    """Build a Mamba-2 LM from recipe keys (``state_size`` an int or one per layer; ``state_sizes``
    overrides it). ``bc_proj_in`` (one entry per layer, null or a width >= that layer's N) builds
    a layer as a balanced cut leaves it: in_proj and conv1d carry B_t, C_t at that width and a
    ``bc_proj`` (starting as the leading N of them) projects them to the layer's N states before
    the scan; trained from the start, this is the cut model's architecture without the cut.
    With ``n_classes`` (a classification dataset) it builds a MambaClassifier over Mamba-2
    mixers. ``pretrained`` (a model folder or hub id) loads that LM instead, cut to ``state_sizes``
    when given (a resumed run). Keys it does not know (data ``info``) are ignored."""
    from .mamba import MambaClassifier

    if pair:
        raise ValueError("model 'mamba2' has no dual-encoder head for retrieval pairs; use model.name=lru")
    if pretrained:
        return cut_to_sizes_(CompressMamba2ForCausalLM.from_pretrained(pretrained), state_sizes)
    cfg = CompressMamba2Config(
        vocab_size=vocab_size,
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        state_sizes=per_layer_sizes(state_size, state_sizes, n_layers),
        expand=expand,
        head_dim=head_dim,
        n_groups=n_groups,
        conv_kernel=d_conv,
        chunk_size=chunk_size,
        tie_word_embeddings=tie_word_embeddings,
        residual_in_fp32=residual_in_fp32,
        pad_vocab_size_multiple=pad_vocab_size_multiple,
        bc_proj_in=bc_proj_in,
    )
    if n_classes is not None:
        return MambaClassifier(cfg, n_classes, d_input=d_input, mixer_cls=Mamba2Mixer)
    return CompressMamba2ForCausalLM(cfg)


def _from_mamba_ssm(ssm: dict, shared: dict) -> CompressMamba2Config:
    """mamba-ssm's ``ssm_cfg`` of a ``Mamba2`` layer (and the fields every layer type shares) →
    ours; settings whose math differs from ours are refused, naming the key."""
    for key, want in (("D_has_hdim", False), ("rmsnorm", True), ("norm_before_gate", False), ("d_ssm", None)):
        if ssm.get(key, want) != want:
            raise ValueError(f"ssm_cfg.{key}={ssm[key]!r} is not supported; expected {want!r}")
    return CompressMamba2Config(
        state_size=ssm.get("d_state", 128),
        head_dim=ssm.get("headdim", 64),
        n_groups=ssm.get("ngroups", 1),
        chunk_size=ssm.get("chunk_size", 256),
        time_step_min=ssm.get("dt_min", 0.001),
        time_step_max=ssm.get("dt_max", 0.1),
        time_step_floor=ssm.get("dt_init_floor", 1e-4),
        time_step_limit=ssm.get("dt_limit", (0.0, float("inf"))),
        **shared,
    )


# the config fields ours and transformers' Mamba2 share (state_size is per layer in ours)
_SHARED_FIELDS = MAMBA_SHARED_FIELDS + (
    "num_heads",
    "head_dim",
    "n_groups",
    "hidden_act",
    "time_step_min",
    "time_step_max",
    "time_step_floor",
    "time_step_limit",
    "rescale_prenorm_residual",
    "chunk_size",
)

FAMILY = register_family(
    ModelFamily(
        name="mamba2",
        build=build_mamba2,
        energy_methods=(*ENERGY_METHODS, "balanced"),
        default_energy_method="output",
        causal_lm=CompressMamba2ForCausalLM,
        model_types=("compressmamba2", "mamba2"),
        mamba_ssm_layer="Mamba2",
        from_mamba_ssm=_from_mamba_ssm,
        transformers_export=("Mamba2Config", "Mamba2ForCausalLM", _SHARED_FIELDS),
        description="Mamba-2 (SSD), per-layer N; balanced truncation per group",
    )
)
