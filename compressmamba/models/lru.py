"""The Linear Recurrent Unit (Orvieto et al. 2023) as the paper uses it, with per-layer state sizes.

Block: BatchNorm (no affine) → LRU → GELU → dropout → GLU → dropout → residual.
LRU: h_k = λ ⊙ h_{k−1} + (B·γ) u_k, y_k = Re(C h_k) + D ⊙ u_k, λ = exp(−exp(ν_log) + i·exp(θ_log)),
γ = exp(γ_log) (initialised to sqrt(1 − |λ|²)). Since λ is constant in time, the recurrence is a
causal convolution with kernel λ^m and runs in parallel over the sequence with an FFT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..reduction.lti import balanced_truncation, hankel_singular_values, lru_eigenvalues, lru_to_lti, lti_to_lru
from ..registry import ModelFamily, register_family
from .common import masked_mean, per_layer_sizes
from .protocol import ENERGY_METHODS_LTI

_SSM_PARAMS = ("nu_log", "theta_log", "gamma_log", "B_re", "B_im", "C_re", "C_im")


@dataclass
class ModelOutput:
    loss: Tensor | None
    logits: Tensor


def _diag_scan_fft(x: Tensor, lam: Tensor) -> Tensor:
    """h_k = Σ_{j≤k} lam^{k−j} x_j along dim 1. x (b, l, n) complex, lam (n,) complex."""
    l = x.shape[1]
    m = torch.arange(l, device=x.device, dtype=torch.float32 if x.dtype == torch.complex64 else torch.float64)
    log_lam = torch.log(lam)
    K = torch.exp(m[:, None] * log_lam[None, :])  # (l, n)
    nfft = 2 * l
    H = torch.fft.ifft(torch.fft.fft(x, n=nfft, dim=1) * torch.fft.fft(K, n=nfft, dim=0)[None], dim=1)
    return H[:, :l]


class LRULayer(nn.Module):
    """One LRU with state size n over width H. Implements the compressible-layer protocol."""

    needs_calibration = False
    # the paper's "ssm" group (lr × factor, no weight decay): all SSM parameters but C
    ssm_params = ("nu_log", "theta_log", "gamma_log", "B_re", "B_im")

    def __init__(self, d_model: int, state_size: int, r_min=0.9, r_max=0.999, max_phase=2 * math.pi):
        super().__init__()
        if state_size < 1:
            raise ValueError(f"state_size must be >= 1, got {state_size}")
        if not 0 <= r_min < r_max < 1:
            raise ValueError(f"need 0 <= r_min < r_max < 1, got r_min={r_min}, r_max={r_max}")
        n, h = state_size, d_model
        self.d_model, self.state_size = h, n
        u1, u2 = torch.rand(n), torch.rand(n)
        nu_log = torch.log(-0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2))
        theta_log = torch.log(max_phase * u2)
        mag = torch.exp(-torch.exp(nu_log))
        self._set_ssm(
            nu_log=nu_log,
            theta_log=theta_log,
            gamma_log=torch.log(torch.sqrt(1 - mag**2)),
            B_re=torch.randn(n, h) / math.sqrt(2 * h),
            B_im=torch.randn(n, h) / math.sqrt(2 * h),
            C_re=torch.randn(h, n) / math.sqrt(n),
            C_im=torch.randn(h, n) / math.sqrt(n),
        )
        self.D = nn.Parameter(torch.randn(h))

    def _set_ssm(self, **tensors):
        ref = next((p for p in self.parameters()), None)
        for name, t in tensors.items():
            dtype = ref.dtype if ref is not None else torch.get_default_dtype()
            device = ref.device if ref is not None else t.device
            setattr(self, name, nn.Parameter(t.detach().to(device=device, dtype=dtype).contiguous()))
        self.state_size = self.nu_log.shape[0]

    def lam(self) -> Tensor:
        return lru_eigenvalues(self.nu_log, self.theta_log)

    def forward(self, u: Tensor) -> Tensor:
        """u (b, l, H) real → y (b, l, H)."""
        lam = self.lam()
        Bt = torch.complex(self.B_re, self.B_im) * torch.exp(self.gamma_log)[:, None]
        C = torch.complex(self.C_re, self.C_im)
        x = u.to(Bt.dtype) @ Bt.transpose(0, 1)  # (b, l, n)
        h = _diag_scan_fft(x, lam)
        return (h @ C.transpose(0, 1)).real + u * self.D

    # --- compressible-layer protocol -------------------------------------------------------
    def lti(self, detach: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """(lam (n,), B̃ (n, H), C (H, n)) in complex128 (``detach=False``: differentiable)."""
        return lru_to_lti(*(getattr(self, k) for k in _SSM_PARAMS), detach=detach)

    def energy(self, stats=None, method: str = "hankel") -> Tensor:
        """Hankel singular values (n,), descending: one per balanced coordinate."""
        if method != "hankel":
            raise ValueError(f"LRU energy method must be 'hankel' (its Hankel singular values), got {method!r}")
        return hankel_singular_values(*self.lti(), layer=getattr(self, "_name", None))

    @torch.no_grad()
    def truncate_(self, keep: Tensor) -> dict:
        """Keep balanced coordinates ``keep``; re-diagonalise into fresh LRU parameters.

        Every new state mixes all old ones (columns of T and V), so no optimizer moment of an old
        coordinate belongs to a new one: the state maps are ``None`` (the trainer drops them).
        """
        keep = torch.as_tensor(keep, dtype=torch.long).cpu()
        if keep.numel() == self.state_size and (keep == torch.arange(self.state_size)).all():
            return {}
        Ar, Br, Cr = balanced_truncation(*self.lti(), keep=keep, layer=getattr(self, "_name", None))
        self._set_ssm(**lti_to_lru(Ar, Br, Cr, layer=getattr(self, "_name", None)))
        return {k: None for k in _SSM_PARAMS}


class LRUBlock(nn.Module):
    def __init__(self, d_model: int, state_size: int, dropout: float, **lru_kw):
        super().__init__()
        self.norm = nn.BatchNorm1d(d_model, affine=False)
        self.lru = LRULayer(d_model, state_size, **lru_kw)
        self.glu_in = nn.Linear(d_model, 2 * d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(x.transpose(1, 2)).transpose(1, 2)
        y = self.drop(F.gelu(self.lru(y)))
        a, g = self.glu_in(y).chunk(2, dim=-1)
        return x + self.drop(a * torch.sigmoid(g))


class LRUModel(nn.Module):
    """Stack of LRU blocks with a linear encoder (float inputs) or a token embedding, mean
    pooling and a classification head; ``pair=True`` makes a dual encoder for retrieval."""

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        state_sizes: list[int],
        n_classes: int,
        d_input: int | None = None,
        vocab_size: int | None = None,
        dropout: float = 0.1,
        pair: bool = False,
        **lru_kw,
    ):
        super().__init__()
        if len(state_sizes) != n_layers:
            raise ValueError(f"state_sizes has {len(state_sizes)} entries, expected n_layers={n_layers}")
        if (d_input is None) == (vocab_size is None):
            raise ValueError("give exactly one of d_input (float features) or vocab_size (tokens)")
        self.encoder = nn.Linear(d_input, d_model) if d_input else nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(LRUBlock(d_model, n, dropout, **lru_kw) for n in state_sizes)
        for i, b in enumerate(self.blocks):
            b.lru._name = f"blocks.{i}.lru"
        self.pair = pair
        if pair:
            self.head = nn.Sequential(
                nn.Linear(4 * d_model, d_model),
                nn.GELU(),
                nn.Linear(d_model, d_model),
                nn.GELU(),
                nn.Linear(d_model, n_classes),
            )
        else:
            self.head = nn.Linear(d_model, n_classes)

    def ssm_layers(self) -> list[LRULayer]:
        return [b.lru for b in self.blocks]

    @property
    def state_sizes(self) -> list[int]:
        return [layer.state_size for layer in self.ssm_layers()]

    def encode(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        h = self.encoder(x)
        for block in self.blocks:
            h = block(h)
        return masked_mean(h, lengths)

    def forward(self, inputs, labels=None, inputs2=None, lengths=None, lengths2=None, **_) -> ModelOutput:
        a = self.encode(inputs, lengths)
        if self.pair:
            if inputs2 is None:
                raise ValueError("pair=True needs inputs2 (the second document of each pair)")
            b = self.encode(inputs2, lengths2)
            a = torch.cat([a, b, a * b, a - b], dim=-1)
        logits = self.head(a)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ModelOutput(loss, logits)


def build_lru(
    d_model: int = 64,
    n_layers: int = 1,
    state_size: int | list[int] = 64,
    state_sizes: list[int] | None = None,
    n_classes: int = 10,
    d_input: int | None = None,
    vocab_size: int | None = None,
    dropout: float = 0.1,
    pair: bool = False,
    r_min: float = 0.9,
    r_max: float = 0.999,
    max_phase: float = 2 * math.pi,
    **_info,
) -> LRUModel:
    """Build an LRU classifier; ``state_sizes`` (one per layer) overrides ``state_size``."""
    state_sizes = per_layer_sizes(state_size, state_sizes, n_layers)
    if d_input is not None and vocab_size is not None:
        vocab_size = None  # float features win
    return LRUModel(
        d_model,
        n_layers,
        list(state_sizes),
        n_classes,
        d_input=d_input,
        vocab_size=vocab_size,
        dropout=dropout,
        pair=pair,
        r_min=r_min,
        r_max=r_max,
        max_phase=max_phase,
    )


FAMILY = register_family(
    ModelFamily(
        name="lru",
        build=build_lru,
        energy_methods=ENERGY_METHODS_LTI,
        description="LRU (diagonal LTI), balanced truncation by Hankel singular values",
    )
)
