"""Accuracy of a causal LM on the labelled positions only (the answers of a recall task)."""

from __future__ import annotations

from torch import Tensor

from ..models.protocol import IGNORE_INDEX, next_token_pairs


def answer_counts(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Correct argmax predictions and their count over the positions whose label is not -100.

    ``logits`` (b, l, V) and ``labels`` (b, l), shifted as the LM's loss is: ``logits[:, t]``
    predicts ``labels[:, t + 1]``. Returns (correct, count), two 0-d int64 tensors.
    """
    pred, target = next_token_pairs(logits, labels)
    keep = target != IGNORE_INDEX
    hit = (pred.argmax(-1) == target) & keep
    return hit.sum(), keep.sum()


__all__ = ["answer_counts"]
