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


def cut_to_sizes_(model, state_sizes: list[int] | None):
    """``model`` (a pretrained Mamba-1 or Mamba-2 LM) with layer i cut to its first
    ``state_sizes[i]`` states of each group: the shapes a checkpoint of a run that started from it
    and cut its states is loaded into (the weights are the checkpoint's). None leaves it as is.
    ValueError unless there is one size per layer, each in [1, the layer's N]."""
    if state_sizes is None:
        return model
    mixers = model.ssm_layers()
    have = [m.state_size for m in mixers]
    sizes = [int(n) for n in state_sizes]
    if len(sizes) != len(have) or any(not 1 <= r <= n for r, n in zip(sizes, have)):
        raise ValueError(
            f"state_sizes {sizes}: expected one size per layer in [1, N] of the pretrained model (N = {have})"
        )
    for m, r in zip(mixers, sizes):
        keep = torch.arange(r)
        m.truncate_(keep.expand(m.n_groups, r) if hasattr(m, "n_groups") else keep)
    return model
