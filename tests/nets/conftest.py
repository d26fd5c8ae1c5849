"""Shared helpers for the network tests."""

from __future__ import annotations

import pytest
import torch

from eldistill.rehearsal.edm_pickle import write_edm_pickle as write_edm_pickle_file


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


@pytest.fixture
def write_edm_pickle():
    """write_edm_pickle(path, net, edm2=False, class_name=None, extra=None, drop_kwargs=(), protocol=...): the
    package's writer (eldistill.rehearsal.edm_pickle, shared with the rehearsal's stand-in teachers): an EDM (dict)
    or EDM2 (EasyDict with a VAE encoder record) snapshot of `net` whose embedded module source raises if executed;
    `drop_kwargs` leaves constructor arguments out of the record, as when upstream used their defaults;
    `protocol` is the pickle protocol (2 spells builtins and bytes the Python 2 way)."""
    return write_edm_pickle_file
