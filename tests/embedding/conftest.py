"""Small inputs shared by the embedding tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def images():
    """images(b, c, r, seed, shift=0.0, scale=1.0) -> a reproducible batch in [-1, 1]."""

    def make(b, c=3, r=16, seed=0, shift=0.0, scale=1.0):
        g = torch.Generator().manual_seed(seed)
        return torch.tanh(shift + scale * torch.randn(b, c, r, r, generator=g))

    return make
