"""Shared helpers for the network tests."""

from __future__ import annotations

import pytest
import torch


def _randomize(net: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Give every parameter random values: EDM zero-initialises output layers, which hides wiring bugs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return net


@pytest.fixture
def randomize():
    return _randomize
