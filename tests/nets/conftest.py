"""Shared helpers for the network tests."""

from __future__ import annotations

import pickle
import sys
import types

import numpy as np
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


# --- a writer of EDM/EDM2-format persistence pickles (anchors B.2), used instead of downloaded files ---------


# Upstream class names of our modules (EDM2's preconditioner is called Precond there).
UPSTREAM_NAMES = {"EDM2Precond": "Precond"}
POISON_SOURCE = "raise RuntimeError('the embedded module source of this test pickle was executed')\n"


def _never(*args, **kwargs):
    raise RuntimeError("the pickle's reconstruct hook was called: a loader ran upstream code")


class _EasyDict(dict):
    pass


class _Persistent:
    """Pickles as torch_utils.persistence._reconstruct_persistent_obj(meta), like EDM's @persistent_class."""

    def __init__(self, class_name, state):
        self.meta = {
            "type": "class",
            "version": 6,
            "module_src": POISON_SOURCE,
            "class_name": class_name,
            "state": state,
        }

    def __reduce__(self):
        return (_never, (self.meta,))


def _fake_upstream_modules():
    persistence = types.ModuleType("torch_utils.persistence")
    _never.__module__, _never.__qualname__ = "torch_utils.persistence", "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _never
    util = types.ModuleType("dnnlib.util")
    _EasyDict.__module__, _EasyDict.__qualname__, _EasyDict.__name__ = "dnnlib.util", "EasyDict", "EasyDict"
    util.EasyDict = _EasyDict
    return {
        "torch_utils": types.ModuleType("torch_utils"),
        "torch_utils.persistence": persistence,
        "dnnlib": types.ModuleType("dnnlib"),
        "dnnlib.util": util,
    }


def _as_persistent(module: torch.nn.Module, init_kwargs=None):
    """The record EDM's persistence writes for `module`: its __dict__ with children converted in turn."""
    state = {k: v for k, v in module.__dict__.items() if k != "config"}
    state["_modules"] = {name: _as_persistent(child) for name, child in module._modules.items() if child is not None}
    state["_init_args"] = ()
    state["_init_kwargs"] = dict(init_kwargs or {})
    state["skip_scale_np"] = np.sqrt(np.float64(0.5))  # numpy scalars, as EDM's blocks carry
    if isinstance(module, torch.nn.ModuleDict):  # not persistent upstream: pickled as the real torch class
        stub = torch.nn.ModuleDict.__new__(torch.nn.ModuleDict)
        stub.__dict__.update(state)
        return stub
    name = type(module).__name__
    return _Persistent(UPSTREAM_NAMES.get(name, name), state)


def _write(path, net, edm2=False, class_name=None, extra=None, drop_kwargs=(), protocol=pickle.DEFAULT_PROTOCOL):
    config = {k: v for k, v in net.config.items() if k not in drop_kwargs}
    config.pop("class_name")
    record = _as_persistent(net, config)
    if class_name:
        record.meta["class_name"] = class_name
    saved = dict(sys.modules)
    sys.modules.update(_fake_upstream_modules())
    try:
        if edm2:
            encoder = _Persistent(
                "StabilityVAEEncoder",
                {
                    "vae_name": "stabilityai/sd-vae-ft-mse",
                    "scale": np.array([0.12, 0.11, 0.13, 0.15], dtype=np.float32),
                    "bias": np.array([-0.7, -0.35, -0.02, 0.33], dtype=np.float32),
                    "batch_size": 8,
                    "_vae": None,
                },
            )
            data = _EasyDict(encoder=encoder, dataset_kwargs=_EasyDict(path="img512-sd.zip"), loss_fn=None, ema=record)
        else:
            loss = _Persistent("EDMLoss", {"P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5})
            data = dict(ema=record, loss_fn=loss, augment_pipe=None, dataset_kwargs=_EasyDict(path="cifar10.zip"))
        data.update(extra or {})
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=protocol)
    finally:
        for name in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"):
            if name in saved:
                sys.modules[name] = saved[name]
            else:
                sys.modules.pop(name, None)
    return path


@pytest.fixture
def write_edm_pickle():
    """write_edm_pickle(path, net, edm2=False, class_name=None, extra=None, drop_kwargs=()): an EDM (dict) or
    EDM2 (EasyDict with a VAE encoder record) snapshot of `net` whose embedded module source raises if executed;
    `drop_kwargs` leaves constructor arguments out of the record, as when upstream used their defaults;
    `protocol` is the pickle protocol (2 spells builtins and bytes the Python 2 way)."""
    return _write
