"""Mamba-3 (SISO and MIMO) language model with one state size per layer; mamba-ssm's weight names.

Per layer (docs/design.md, "Kernels", Mamba-3; Lahoti et al., arXiv 2603.15569): ``in_proj(u)`` →
z, x (D_in each), B, C (R·G·N each, ordered (r, g, n)), dd_dt, dd_A, trap (H each), θ (S); B, C
go through RMSNorms over N (``B_norm``, ``C_norm``); Δ = softplus(dd_dt + dt_bias); A =
−max(f(dd_A), A_floor) with mamba-ssm's heavy-tail f (a scalar per head and step); λ =
sigmoid(trap); the scan (kernels/mamba3) adds ``B_bias``, ``C_bias`` (H, R, N), turns the first S
coordinate pairs by the accumulated angles and returns y (b, l, R, H, P); each rank is gated by
SiLU(z ⊙ mimo_z_r) (after a per-head RMSNorm with ``is_outproj_norm``), the ranks are summed with
``mimo_o`` (SISO: R = 1, no mimo tensors) and ``out_proj`` maps back. No conv1d.

Names: ``backbone.layers.{i}.mixer.{in_proj, dt_bias, B_bias, C_bias, B_norm, C_norm, mimo_x,
mimo_z, mimo_o, D, norm, out_proj}`` as mamba-ssm's ``Mamba3``. Our state coordinates put every
turned pair side by side, (2i, 2i + 1) for i < S, then the N − 2S unturned ones; mamba-ssm's MIMO
kernels pair i with i + N/2 instead, so a MIMO layer's B/C coordinates are permuted on the way in
and out of mamba-ssm's layout (:func:`mimo_permutation`). Each layer has its own N
(``state_sizes``) and S (``rope_angles``); after a balanced cut also ``mixer.bc_proj.{B, C}``
(G, r, F_in), projecting the normed unturned coordinates (config ``bc_proj_in``: F_in per layer).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .. import compat
from ..kernels.mamba3 import mamba3_scan_fn, mamba3_step
from ..registry import ModelFamily, register_family
from .common import per_layer_sizes
from .lm import MixerBase, RecurrentCache, SSMForCausalLM, set_shared_config_fields, set_state_sizes
from .mamba2 import BCProjection, GatedRMSNorm


def default_angles(n: int, rope_fraction: float) -> int:
    """mamba-ssm's number of rotary angles for N states: ⌊N·fraction⌋ rounded down to even, halved."""
    split = int(n * rope_fraction)
    return (split - split % 2) // 2


class CompressMamba3Config(compat.PreTrainedConfig):
    """A Mamba-3 LM: mamba-ssm's ``Mamba3`` layer settings plus ``state_sizes`` and ``rope_angles``
    (one N and one S per layer). mamba-ssm's names are accepted as aliases (``d_model``,
    ``n_layer``, ``headdim``, ``ngroups``)."""

    model_type = "compressmamba3"
    attribute_map = {
        "d_model": "hidden_size",
        "n_layer": "num_hidden_layers",
        "headdim": "head_dim",
        "ngroups": "n_groups",
    }

    def __init__(
        self,
        vocab_size: int = 50280,
        hidden_size: int = 768,
        state_size: int = 128,
        state_sizes: list[int] | None = None,
        rope_angles: list[int] | None = None,
        num_hidden_layers: int = 24,
        head_dim: int = 64,
        expand: int = 2,
        n_groups: int = 1,
        rope_fraction: float = 0.5,
        is_mimo: bool = False,
        mimo_rank: int = 4,
        is_outproj_norm: bool = False,
        A_floor: float = 1e-4,
        chunk_size: int = 64,
        conv_kernel: int = 4,
        use_bias: bool = False,
        use_conv_bias: bool = False,
        layer_norm_epsilon: float = 1e-5,
        residual_in_fp32: bool = True,
        initializer_range: float = 0.1,
        time_step_rank: int | str = "auto",
        time_step_min: float = 0.001,
        time_step_max: float = 0.1,
        time_step_floor: float = 1e-4,
        rescale_prenorm_residual: bool = False,
        tie_word_embeddings: bool = True,
        pad_vocab_size_multiple: int = 1,
        pad_token_id: int = 0,
        bos_token_id: int = 0,
        eos_token_id: int = 0,
        use_cache: bool = True,
        bc_proj_in: list[int | None] | None = None,
        **kwargs,
    ):
        alias = {name: kwargs.pop(a) for a, name in self.attribute_map.items() if a in kwargs}
        set_shared_config_fields(self, locals(), alias)
        self.head_dim = int(alias.get("head_dim", head_dim))
        self.n_groups = int(alias.get("n_groups", n_groups))
        self.intermediate_size = int(expand * self.hidden_size)
        if self.intermediate_size % self.head_dim:
            raise ValueError(f"head_dim={self.head_dim} must divide expand * hidden_size ({self.intermediate_size})")
        self.num_heads = self.intermediate_size // self.head_dim
        if self.n_groups < 1 or self.num_heads % self.n_groups:
            raise ValueError(f"n_groups={self.n_groups} must be >= 1 and divide num_heads={self.num_heads}")
        if float(rope_fraction) not in (0.5, 1.0):
            raise ValueError(f"rope_fraction must be 0.5 or 1.0, got {rope_fraction!r}")
        self.rope_fraction = float(rope_fraction)
        self.is_mimo, self.is_outproj_norm = bool(is_mimo), bool(is_outproj_norm)
        self.mimo_rank = int(mimo_rank) if self.is_mimo else 1
        if self.mimo_rank < 1:
            raise ValueError(f"mimo_rank must be >= 1, got {mimo_rank!r}")
        self.A_floor, self.chunk_size = float(A_floor), int(chunk_size)
        self.rope_angles = _angles(rope_angles, self.state_sizes, self.rope_fraction)
        self.bc_proj_in = _projection_widths(bc_proj_in, self.state_sizes, self.rope_angles)
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )


def _angles(angles, sizes: list[int], fraction: float) -> list[int]:
    """One S per layer with 2S <= N (default: mamba-ssm's count for each N)."""
    if angles is None:
        return [default_angles(n, fraction) for n in sizes]
    angles = [int(s) for s in angles]
    if len(angles) != len(sizes) or any(s < 0 or 2 * s > n for s, n in zip(angles, sizes)):
        raise ValueError(f"rope_angles {angles} must hold one S per layer with 0 <= 2S <= N (state sizes {sizes})")
    return angles


def _compute_dtype(t: Tensor) -> torch.dtype:
    """float64 for a float64 model (the tests' reference precision), else float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _projection_widths(widths, sizes: list[int], angles: list[int]) -> list[int | None] | None:
    """``bc_proj_in``: per layer None, or the number F_in >= N − 2S of unturned coordinates that
    in_proj and the B/C norms carry before a balanced cut's projection; None when no layer has one."""
    if widths is None:
        return None
    widths = [None if w is None else int(w) for w in widths]
    if len(widths) != len(sizes) or any(w is not None and w < n - 2 * a for w, n, a in zip(widths, sizes, angles)):
        raise ValueError(
            f"bc_proj_in {widths} must hold one entry per layer ({len(sizes)}), each null or >= that layer's "
            f"unturned state count N - 2S (state sizes {sizes}, rope angles {angles})"
        )
    return widths


def heavy_tail(t: Tensor) -> Tensor:
    """mamba-ssm's activation for A: 1 + t for t >= 0, 1 / (1 − t) below (positive, C¹ at 0)."""
    return t.clamp_min(0) + torch.reciprocal(1 - t.clamp_max(0))


class BCNorm(nn.Module):
    """RMSNorm over the last axis (N), computed in fp32: mamba-ssm's ``B_norm`` / ``C_norm``."""

    def __init__(self, n: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, t: Tensor) -> Tensor:
        t = t.to(_compute_dtype(t))
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.to(t.dtype)


class Mamba3Cache(RecurrentCache):
    """The recurrent cache with Mamba-3's extra state per layer: accumulated angles (b, H, S), the
    previous rotated B (k, (b, R, H, N)) and the previous x (v, (b, H, P)); ``ssm`` holds h."""

    def __init__(self, n_layers: int):
        super().__init__(n_layers)
        self.angle: list[Tensor | None] = [None] * n_layers
        self.k: list[Tensor | None] = [None] * n_layers
        self.v: list[Tensor | None] = [None] * n_layers

    def reorder_cache(self, beam_idx: Tensor) -> None:
        super().reorder_cache(beam_idx)
        pick = lambda ts: [t.index_select(0, beam_idx.to(t.device)) if t is not None else None for t in ts]
        self.angle, self.k, self.v = pick(self.angle), pick(self.k), pick(self.v)

    def state(self, i: int) -> tuple:
        return self.angle[i], self.ssm[i], self.k[i], self.v[i]

    def set_state(self, i: int, state: tuple) -> None:
        self.angle[i], self.ssm[i], self.k[i], self.v[i] = (t.contiguous() for t in state)


class Mamba3Mixer(MixerBase):
    """One Mamba-3 layer (SISO or MIMO) with its own N and S; the compressible-layer protocol cuts
    whole modes: a turned pair (one complex state) or one unturned coordinate (reduction/mamba3.py)."""

    needs_calibration = True
    no_weight_decay_params = ("D", "dt_bias")

    def __init__(self, config: CompressMamba3Config, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        c = config
        self.n_heads, self.head_dim, self.n_groups, self.rank = c.num_heads, c.head_dim, c.n_groups, c.mimo_rank
        self.d_inner = c.intermediate_size
        n = self.state_size = c.state_sizes[layer_idx]
        self.n_angles = s = c.rope_angles[layer_idx]
        f_in = (c.bc_proj_in or [None] * c.num_hidden_layers)[layer_idx]
        self.bc_width = n if f_in is None else 2 * s + f_in  # B/C coordinates out of in_proj and the norms
        h, r = self.n_heads, self.rank
        self.in_proj = nn.Linear(c.hidden_size, self._proj_width(self.bc_width, s), bias=c.use_bias)
        self.dt_bias = nn.Parameter(torch.zeros(h))
        self.B_bias, self.C_bias = nn.Parameter(torch.ones(h, r, n)), nn.Parameter(torch.ones(h, r, n))
        self.B_norm, self.C_norm = BCNorm(self.bc_width), BCNorm(self.bc_width)
        self.bc_proj = BCProjection(self.n_groups, n - 2 * s, f_in) if f_in is not None else None
        self._balancing = None  # (sigma, T, Tinv) of the last energy(stats, "balanced")
        if c.is_mimo:
            self.mimo_x = nn.Parameter(torch.full((h, r, self.head_dim), 1.0 / r))
            self.mimo_z = nn.Parameter(torch.ones(h, r, self.head_dim))
            self.mimo_o = nn.Parameter(torch.full((h, r, self.head_dim), 1.0 / r))
        self.D = nn.Parameter(torch.ones(h))
        if c.is_outproj_norm:
            self.norm = GatedRMSNorm(self.d_inner, self.head_dim, 1e-5, norm_before_gate=True)
        self.out_proj = nn.Linear(self.d_inner, c.hidden_size, bias=c.use_bias)
        self.stats = None

    def _proj_width(self, n: int, s: int) -> int:
        return 2 * self.d_inner + 2 * self.rank * self.n_groups * n + 3 * self.n_heads + s

    @torch.no_grad()
    def reset_parameters(self, where=lambda t: True):
        """mamba-ssm's initialisation: Δ log-uniform in [dt_min, dt_max], biases and norms 1,
        mimo_x = mimo_o = 1/R, mimo_z = 1, D = 1 (each tensor for which ``where`` holds)."""
        if where(self.dt_bias):
            self.dt_bias.copy_(self.initial_dt_bias(self.n_heads, self.config))
        ones = [self.B_bias, self.C_bias, self.B_norm.weight, self.C_norm.weight, self.D]
        ones += [self.mimo_z] if self.config.is_mimo else []
        ones += [self.norm.weight] if self.config.is_outproj_norm else []
        for t in ones:
            if where(t):
                t.fill_(1.0)
        for t in (self.mimo_x, self.mimo_o) if self.config.is_mimo else ():
            if where(t):
                t.fill_(1.0 / self.rank)
        for w in (self.bc_proj.B, self.bc_proj.C) if self.bc_proj is not None else ():
            if where(w):
                w.copy_(torch.eye(*w.shape[1:]).expand_as(w))
        self.rescale_out_proj(where)

    def _prepare(self, u: Tensor) -> dict:
        """in_proj(u) (..., H_model) → z (..., H, P) and the scan's inputs (kernels/mamba3)."""
        n, g, r, h = self.bc_width, self.n_groups, self.rank, self.n_heads
        parts = torch.split(self.in_proj(u), [self.d_inner] * 2 + [r * g * n] * 2 + [h] * 3 + [self.n_angles], dim=-1)
        z, x, B, C, dd_dt, dd_A, trap, theta = parts
        ct = _compute_dtype(x)
        B, C = self.B_norm(B.unflatten(-1, (r, g, n))), self.C_norm(C.unflatten(-1, (r, g, n)))
        if self.bc_proj is not None:  # a balanced cut's projection of the unturned coordinates
            s2 = 2 * self.n_angles
            Bu, Cu = self.bc_proj(B[..., s2:], C[..., s2:])
            B, C = torch.cat([B[..., :s2], Bu], -1), torch.cat([C[..., :s2], Cu], -1)
        A = (-heavy_tail(dd_A.to(ct))).clamp(max=-self.config.A_floor)
        args = {
            "x": x.unflatten(-1, (h, self.head_dim)),
            "delta": F.softplus(dd_dt.to(ct) + self.dt_bias.to(ct)),
            "A": A,
            "trap": torch.sigmoid(trap.to(ct)),
            "B": B,
            "C": C,
            "theta": theta.to(ct),
            "B_bias": self.B_bias.to(ct),
            "C_bias": self.C_bias.to(ct),
            "D": self.D.to(ct),
            "mimo_x": self.mimo_x.to(ct) if self.config.is_mimo else None,
        }
        return z.unflatten(-1, (h, self.head_dim)), args

    def _output(self, y: Tensor, z: Tensor) -> Tensor:
        """y (..., R, H, P), z (..., H, P) → out_proj(Σ_r mimo_o_r ⊙ gate(y_r, z ⊙ mimo_z_r))."""
        zr = z.unsqueeze(-3)
        if self.config.is_mimo:
            zr = zr * self.mimo_z.transpose(0, 1).to(z.dtype)
        if self.config.is_outproj_norm:
            g = self.norm(y.flatten(-2), zr.expand_as(y).flatten(-2)).unflatten(-1, (self.n_heads, self.head_dim))
        else:
            g = y * F.silu(zr.to(y.dtype))
        out = (g * self.mimo_o.transpose(0, 1)).sum(-3) if self.config.is_mimo else g.squeeze(-3)
        return self.out_proj(out.flatten(-2).to(self.out_proj.weight.dtype))

    def forward(self, hidden: Tensor, cache: Mamba3Cache | None = None) -> Tensor:
        """hidden (b, l, H_model) → (b, l, H_model); fills ``cache`` when given (prefill)."""
        if cache is not None and cache.offset > 0:
            return self.step(hidden, cache)
        z, args = self._prepare(hidden)
        if self.stats is not None:
            self.stats.update(args)
        out = mamba3_scan_fn(**args, return_final_state=cache is not None, chunk_size=self.config.chunk_size)
        if cache is not None:
            out, last = out
            cache.set_state(self.layer_idx, last)
        return self._output(out, z)

    def step(self, hidden: Tensor, cache: Mamba3Cache) -> Tensor:
        """One decoding token: hidden (b, 1, H_model); the layer's state advances in the cache."""
        z, args = self._prepare(hidden[:, 0])
        y, state = mamba3_step(cache.state(self.layer_idx), **args)
        cache.set_state(self.layer_idx, state)
        return self._output(y, z).unsqueeze(1)

    # --- compressible-layer protocol -------------------------------------------------------
    def start_stats(self):
        from ..reduction.mamba3 import Mamba3Stats

        self.stats = Mamba3Stats(self.n_heads, self.state_size, self.n_angles, self.config.chunk_size)

    def energy(self, stats: dict | None, method: str = "output") -> Tensor:
        """One float64 energy per mode (S turned pairs, then the N − 2S unturned coordinates),
        summed over heads; ``truncate_`` takes indices into it (reduction/mamba3.py). With
        ``balanced`` the unturned modes are each group's balanced coordinates (their Hankel singular
        values summed over groups), and the next ``truncate_`` projects onto them."""
        from ..reduction.mamba3 import balanced_modes, mode_energy

        if stats is None:
            raise ValueError(f"layer {self.layer_idx}: Mamba-3 energy needs calibration statistics")
        where = f"layers.{self.layer_idx}"
        self._balancing = None
        if method != "balanced":
            return mode_energy(stats, method, self.n_angles, self.state_size, layer=where)
        energy, self._balancing = balanced_modes(stats, self.n_angles, self.state_size, self.n_groups, layer=where)
        return energy

    @torch.no_grad()
    def truncate_(self, keep) -> dict:
        from ..reduction.mamba3 import truncate_layer_

        return truncate_layer_(self, keep)

    def _empty_bc_(self, width: int, s: int, proj_shape: tuple | None) -> None:
        """in_proj and the B/C norms reshaped (uninitialised) to ``width`` B/C coordinates and S = ``s``
        angles, with a state projection of ``proj_shape`` (G, F_out, F_in): the shapes a stored layer
        (a checkpoint of a cut model, rebuilt from its state sizes alone) is loaded into."""
        w = self.in_proj.weight
        rows = self._proj_width(width, s)
        self.in_proj.weight = nn.Parameter(w.new_empty(rows, w.shape[1]))
        if self.in_proj.bias is not None:
            self.in_proj.bias = nn.Parameter(w.new_empty(rows))
        self.in_proj.out_features = rows
        self.B_norm.weight, self.C_norm.weight = nn.Parameter(w.new_empty(width)), nn.Parameter(w.new_empty(width))
        if proj_shape is not None:
            self.bc_proj = BCProjection(*proj_shape).to(device=w.device, dtype=w.dtype)
        self.bc_width = width
        self._set_shape(self.state_size, s)

    def _set_proj_width(self, f_in: int | None) -> None:
        widths = self.config.bc_proj_in or [None] * self.config.num_hidden_layers
        widths[self.layer_idx] = f_in
        self.config.bc_proj_in = widths if any(w is not None for w in widths) else None

    def _set_shape(self, n: int, s: int) -> None:
        self.state_size, self.n_angles = n, s
        set_state_sizes(self.config, [n], layer=self.layer_idx)
        self.config.rope_angles[self.layer_idx] = s
        if self.bc_proj is not None:
            self._set_proj_width(self.bc_width - 2 * s)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Before loading: take S from the stored in_proj (a checkpoint of a cut model rebuilt from
        its state sizes alone) and, for a state dict in mamba-ssm's MIMO layout (config
        ``mamba_ssm_layout``, set by the mamba-ssm loader), permute its B/C coordinates into ours."""
        stored, norm = state_dict.get(prefix + "in_proj.weight"), state_dict.get(prefix + "B_norm.weight")
        proj = state_dict.get(prefix + "bc_proj.B")
        if stored is not None and norm is not None:
            width = norm.shape[0]
            s = stored.shape[0] - self._proj_width(width, 0)
            if (width, s) != (self.bc_width, self.n_angles) or (proj is not None and self.bc_proj is None):
                self._empty_bc_(width, s, None if proj is None else tuple(proj.shape))
        if getattr(self.config, "mamba_ssm_layout", False) and self.config.is_mimo:
            perm = mimo_permutation(self.state_size, self.n_angles)
            own = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
            for name, t in permute_bc(self, own, perm).items():
                state_dict[prefix + name] = t
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def mimo_permutation(n: int, s: int) -> Tensor:
    """Our coordinate j is mamba-ssm MIMO's coordinate perm[j]: pairs (i, i + N/2) for i < S side
    by side, then the rest in order."""
    if n % 2:
        raise ValueError(f"mamba-ssm's MIMO layout needs an even state size, got N={n}")
    turned = [c for i in range(s) for c in (i, i + n // 2)]
    return torch.tensor(turned + [c for c in range(n) if c not in set(turned)], dtype=torch.long)


def bc_rows(mixer: Mamba3Mixer, coords: Tensor) -> Tensor:
    """in_proj rows that carry B and C coordinates ``coords`` of every (rank, group), in order."""
    n, blocks = mixer.bc_width, mixer.rank * mixer.n_groups
    base = 2 * mixer.d_inner
    per = (torch.arange(blocks)[:, None] * n + coords[None]).flatten()
    return torch.cat([base + per, base + blocks * n + per])


def permute_bc(mixer: Mamba3Mixer, sd: dict, perm: Tensor) -> dict:
    """The layer's B/C tensors of state dict ``sd`` (names relative to the layer) with their
    coordinates taken in order ``perm``."""
    out = {}
    rows = bc_rows(mixer, torch.arange(mixer.bc_width))
    new_rows = bc_rows(mixer, perm)
    for name, t in sd.items():
        if name in ("in_proj.weight", "in_proj.bias"):
            t = t.clone()
            t[rows] = sd[name][new_rows]
        elif name in ("B_bias", "C_bias"):
            t = t[..., perm]
        elif name in ("B_norm.weight", "C_norm.weight"):
            t = t[perm]
        else:
            continue
        out[name] = t
    return out


class CompressMamba3ForCausalLM(SSMForCausalLM):
    """Mamba-3 LM with per-layer state sizes; ``forward(input_ids, labels)`` → ``.loss``, ``.logits``."""

    config_class = CompressMamba3Config
    mixer_cls = Mamba3Mixer

    def load_state_dict(self, state_dict, *args, **kwargs):
        """As torch's; a MIMO state dict in mamba-ssm's layout (``config.mamba_ssm_layout``, set by
        the mamba-ssm loader) is permuted into ours, once: the flag is cleared afterwards."""
        try:
            return super().load_state_dict(dict(state_dict), *args, **kwargs)
        finally:
            self.config.mamba_ssm_layout = False

    def prepare_inputs_for_generation(self, input_ids, use_cache=True, **kwargs):
        if use_cache is not False and kwargs.get(compat.CACHE_NAME) is None:
            kwargs[compat.CACHE_NAME] = Mamba3Cache(self.config.num_hidden_layers)
        return super().prepare_inputs_for_generation(input_ids, use_cache=use_cache, **kwargs)


def build_mamba3(
    d_model: int = 256,
    n_layers: int = 4,
    state_size: int | list[int] = 64,
    state_sizes: list[int] | None = None,
    rope_angles: list[int] | None = None,
    vocab_size: int = 256,
    expand: int = 2,
    head_dim: int = 32,
    n_groups: int = 1,
    rope_fraction: float = 0.5,
    is_mimo: bool = False,
    mimo_rank: int = 4,
    is_outproj_norm: bool = False,
    chunk_size: int = 64,
    tie_word_embeddings: bool = True,
    residual_in_fp32: bool = True,
    pad_vocab_size_multiple: int = 1,
    pretrained: str | None = None,
    n_classes: int | None = None,
    d_input: int | None = None,
    pair: bool = False,
    **_info,
):
    """Build a Mamba-3 LM from recipe keys (``state_size`` an int or one per layer; ``state_sizes``
    and ``rope_angles`` override it, as a checkpoint of a cut model records them). With
    ``n_classes`` it builds a MambaClassifier over Mamba-3 mixers. Unknown keys (data ``info``)
    are ignored."""
    from .mamba import MambaClassifier

    if pair:
        raise ValueError("model 'mamba3' has no dual-encoder head for retrieval pairs; use model.name=lru")
    if pretrained:
        return CompressMamba3ForCausalLM.from_pretrained(pretrained)
    cfg = CompressMamba3Config(
        vocab_size=vocab_size,
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        state_sizes=per_layer_sizes(state_size, state_sizes, n_layers),
        rope_angles=rope_angles,
        expand=expand,
        head_dim=head_dim,
        n_groups=n_groups,
        rope_fraction=rope_fraction,
        is_mimo=is_mimo,
        mimo_rank=mimo_rank,
        is_outproj_norm=is_outproj_norm,
        chunk_size=chunk_size,
        tie_word_embeddings=tie_word_embeddings,
        residual_in_fp32=residual_in_fp32,
        pad_vocab_size_multiple=pad_vocab_size_multiple,
    )
    if n_classes is not None:
        return MambaClassifier(cfg, n_classes, d_input=d_input, mixer_cls=Mamba3Mixer)
    return CompressMamba3ForCausalLM(cfg)


_MAMBA_SSM_KEYS = {
    "d_state": ("state_size", 128),
    "headdim": ("head_dim", 64),
    "ngroups": ("n_groups", 1),
    "rope_fraction": ("rope_fraction", 0.5),
    "is_mimo": ("is_mimo", False),
    "mimo_rank": ("mimo_rank", 4),
    "is_outproj_norm": ("is_outproj_norm", False),
    "A_floor": ("A_floor", 1e-4),
    "chunk_size": ("chunk_size", 64),
    "dt_min": ("time_step_min", 0.001),
    "dt_max": ("time_step_max", 0.1),
    "dt_init_floor": ("time_step_floor", 1e-4),
}


def _from_mamba_ssm(ssm: dict, shared: dict) -> CompressMamba3Config:
    """mamba-ssm's ``ssm_cfg`` of a ``Mamba3`` layer → ours (a MIMO layer's B/C coordinates are
    permuted into our layout when its weights load)."""
    ours = {name: ssm.get(key, default) for key, (name, default) in _MAMBA_SSM_KEYS.items()}
    shared = {k: v for k, v in shared.items() if k not in ("conv_kernel", "use_conv_bias")}
    cfg = CompressMamba3Config(**ours, **shared)
    cfg.mamba_ssm_layout = True
    return cfg


def mamba_ssm_config(config: CompressMamba3Config) -> dict:
    """mamba-ssm's ``MambaConfig`` dict (``ssm_cfg.layer: Mamba3``) for ``config``; every layer
    must have the N and S a mamba-ssm layer of its d_state has (one N, mamba-ssm's S for it)."""
    sizes, angles = config.state_sizes, config.rope_angles
    n = sizes[0]
    if config.bc_proj_in is not None:
        raise ValueError(
            f"layers with a balanced cut's state projection (bc_proj_in {config.bc_proj_in}) have no mamba-ssm "
            "form: save the model with save_pretrained (our format) instead, or cut it with output or hankel"
        )
    if len(set(sizes)) > 1 or any(s != default_angles(n, config.rope_fraction) for s in angles):
        raise ValueError(
            f"mamba-ssm's Mamba3 has one d_state and rope_fraction·d_state/2 angles per layer; this model has "
            f"state_sizes {sizes} and rope_angles {angles}: save it with save_pretrained (our format) instead"
        )
    ssm = {"layer": "Mamba3", "d_state": n, "expand": config.expand}
    ssm.update({key: getattr(config, name) for key, (name, _) in _MAMBA_SSM_KEYS.items() if key != "d_state"})
    return {
        "d_model": config.hidden_size,
        "d_intermediate": 0,
        "n_layer": config.num_hidden_layers,
        "vocab_size": config.vocab_size,
        "ssm_cfg": ssm,
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": config.residual_in_fp32,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": config.pad_vocab_size_multiple,
        "tie_embeddings": config.tie_word_embeddings,
        "norm_epsilon": config.layer_norm_epsilon,
    }


def mamba_ssm_state_dict(model: CompressMamba3ForCausalLM) -> dict[str, Tensor]:
    """The model's tensors under mamba-ssm's ``MambaLMHeadModel`` names and layout."""
    sd = {
        k.replace("backbone.embeddings.", "backbone.embedding."): v.detach().clone()
        for k, v in model.state_dict().items()
    }
    if model.config.is_mimo:
        for i, mixer in enumerate(model.ssm_layers()):
            prefix = f"backbone.layers.{i}.mixer."
            inverse = torch.argsort(mimo_permutation(mixer.state_size, mixer.n_angles))
            own = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
            sd.update({prefix + k: v for k, v in permute_bc(mixer, own, inverse).items()})
    return sd


def export_mamba_ssm(model: CompressMamba3ForCausalLM, out_dir) -> Path:
    """Write a mamba-ssm ``MambaLMHeadModel`` folder: config.json and pytorch_model.bin (a plain
    tensor dict, which loads with ``weights_only=True``), each written to a temp file and renamed."""
    import io
    import json

    from ..atomic import atomic_write, atomic_write_text

    if not isinstance(model, CompressMamba3ForCausalLM):
        raise ValueError(f"model: mamba-ssm export is for Mamba-3 language models, got {type(model).__name__}")
    cfg = mamba_ssm_config(model.config)
    out = Path(out_dir)
    buf = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in mamba_ssm_state_dict(model).items()}, buf)
    atomic_write(out / "pytorch_model.bin", lambda f: f.write(buf.getvalue()))
    atomic_write_text(out / "config.json", json.dumps(cfg, indent=2))
    return out


FAMILY = register_family(
    ModelFamily(
        name="mamba3",
        build=build_mamba3,
        energy_methods=("output", "hankel", "balanced"),
        default_energy_method="output",
        causal_lm=CompressMamba3ForCausalLM,
        model_types=("compressmamba3",),
        mamba_ssm_layer="Mamba3",
        from_mamba_ssm=_from_mamba_ssm,
        description="Mamba-3 (SISO and MIMO, complex-valued states), per-layer N; whole modes cut",
    )
)
