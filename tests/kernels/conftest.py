"""Kernel-test fixtures."""

import pytest
import torch


@pytest.fixture
def poison_empty(monkeypatch):
    """Every buffer a launcher allocates with ``torch.empty`` starts as NaN, so an element a
    kernel forgets to write fails the comparison instead of passing as leftover memory."""
    real = torch.empty

    def nan_empty(*args, **kw):
        t = real(*args, **kw)
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", nan_empty)
