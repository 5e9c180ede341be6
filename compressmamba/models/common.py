"""Small pieces the model families share."""

from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(h: Tensor, lengths: Tensor | None = None) -> Tensor:
    """Mean of ``h`` (batch, length, features) over each row's first ``lengths`` positions (all
    positions when ``lengths`` is None); a row of length 0 gives zeros."""
    if lengths is None:
        return h.mean(1)
    mask = (torch.arange(h.shape[1], device=h.device)[None] < lengths[:, None]).to(h.dtype)
    return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)


def per_layer_sizes(state_size: int | list[int], state_sizes: list[int] | None, n_layers: int) -> list[int]:
    """Recipe keys to one state size per layer: ``state_sizes`` wins; ``state_size`` is an int
    for every layer or a list of one per layer."""
    if state_sizes is not None:
        return list(state_sizes)
    return list(state_size) if isinstance(state_size, (list, tuple)) else [int(state_size)] * n_layers
