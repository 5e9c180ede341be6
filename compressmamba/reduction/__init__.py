"""Reduction math: Gramians, Hankel singular values, balanced truncation, state selection."""

from .lti import (
    balanced_truncation,
    gramians_diagonal,
    hankel_singular_values,
    lru_to_lti,
    lti_to_lru,
    rank_for_energy,
    transfer_function,
)
from .selection import SELECTIONS, select_states

__all__ = [
    "SELECTIONS",
    "balanced_truncation",
    "gramians_diagonal",
    "hankel_singular_values",
    "lru_to_lti",
    "lti_to_lru",
    "rank_for_energy",
    "select_states",
    "transfer_function",
]
