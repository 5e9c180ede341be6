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
    """One state size per layer, for recipes and configs alike: ``state_sizes`` wins; ``state_size``
    is an int for every layer or a list of one per layer. ValueError unless there are ``n_layers``
    sizes, each >= 1."""
    given = state_sizes if state_sizes is not None else state_size
    sizes = [int(n) for n in given] if isinstance(given, (list, tuple)) else [int(given)] * n_layers
    if len(sizes) != n_layers or min(sizes, default=0) < 1:
        raise ValueError(f"state_sizes {sizes} must hold {n_layers} sizes >= 1 (one per layer)")
    return sizes
