"""A writer of EDM/EDM2-format persistence pickles (anchors B.2), for stand-ins of the published teachers.

The published snapshots are pickles of `torch_utils.persistence` records: each network module becomes
`_reconstruct_persistent_obj(meta)` with `meta = {type, version, module_src, class_name, state}`, where `state`
is the module's `__dict__` (children converted in turn) and `module_src` the source code upstream would execute.
EDM writes `{"ema": net, "loss_fn": ..., "augment_pipe": ..., "dataset_kwargs": ...}`; EDM2 an EasyDict that also
holds the SD VAE `encoder` record. Ours embed a module source and a reconstruct hook that both raise if anything
ever runs them, so a loader that executes pickled code fails loudly (eldistill.checkpoints never does).

The bytes are deterministic: torch pickles a tensor's storage as a nested legacy torch.save whose storage key is
the storage's memory address; we renumber those keys, so the same network gives the same file (a stable sha256
for the rehearsal's `file://` URLs).
"""

from __future__ import annotations

import io
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import torch

# Upstream class names of our modules (EDM2's preconditioner is called Precond there).
UPSTREAM_NAMES = {"EDM2Precond": "Precond"}
POISON_SOURCE = "raise RuntimeError('the embedded module source of this stand-in pickle was executed')\n"
EDM2_ENCODER = {  # EDM2's StabilityVAEEncoder record: the SD VAE name and EDM2's latent normalisation
    "vae_name": "stabilityai/sd-vae-ft-mse",
    "scale": [0.12, 0.11, 0.13, 0.15],
    "bias": [-0.7, -0.35, -0.02, 0.33],
    "batch_size": 8,
}


def _never(*args, **kwargs):
    raise RuntimeError("the pickle's reconstruct hook was called: a loader ran upstream code")


class _EasyDict(dict):
    pass


class _Persistent:
    """Pickles as torch_utils.persistence._reconstruct_persistent_obj(meta), like EDM's @persistent_class."""

    def __init__(self, class_name, state):
        self.meta = {"type": "class", "version": 6, "module_src": POISON_SOURCE, "class_name": class_name}
        self.meta["state"] = state

    def __reduce__(self):
        return (_never, (self.meta,))


def _fake_upstream_modules() -> dict[str, types.ModuleType]:
    """Modules named as upstream's, so that pickle records the same globals the published files hold."""
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


class _StablePickler(pickle.Pickler):
    """A pickler whose tensor storages carry renumbered keys instead of memory addresses."""

    def __init__(self, file, protocol: int):
        super().__init__(file, protocol=protocol)
        self.count = 0

    def reducer_override(self, obj):
        if isinstance(obj, torch.storage.TypedStorage):
            function, (data,) = obj.__reduce__()
            address = str(obj._cdata).encode()
            self.count += 1
            key = str(self.count).zfill(len(address)).encode()  # same length: the pickle's framing is unchanged
            return function, (data.replace(address, key),)
        return NotImplemented


def write_edm_pickle(
    path, net, edm2=False, class_name=None, extra=None, drop_kwargs=(), protocol=pickle.DEFAULT_PROTOCOL
) -> Path:
    """An EDM (dict) or EDM2 (EasyDict with a VAE encoder record) snapshot of `net` at `path`; `drop_kwargs`
    leaves constructor arguments out of the record, as when upstream used their defaults; `protocol` is the pickle
    protocol (the default, as EDM wrote its snapshots; 2 spells builtins and bytes the Python 2 way)."""
    config = {k: v for k, v in net.config.items() if k not in drop_kwargs}
    config.pop("class_name")
    record = _as_persistent(net, config)
    if class_name:
        record.meta["class_name"] = class_name
    saved = dict(sys.modules)
    sys.modules.update(_fake_upstream_modules())
    try:
        if edm2:
            encoder = {k: np.array(v, dtype=np.float32) if isinstance(v, list) else v for k, v in EDM2_ENCODER.items()}
            encoder = _Persistent("StabilityVAEEncoder", {**encoder, "_vae": None})
            data = _EasyDict(encoder=encoder, dataset_kwargs=_EasyDict(path="img512-sd.zip"), loss_fn=None, ema=record)
        else:
            loss = _Persistent("EDMLoss", {"P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5})
            data = dict(ema=record, loss_fn=loss, augment_pipe=None, dataset_kwargs=_EasyDict(path="cifar10.zip"))
        data.update(extra or {})
        buffer = io.BytesIO()
        _StablePickler(buffer, protocol).dump(data)
    finally:
        for name in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"):
            if name in saved:
                sys.modules[name] = saved[name]
            else:
                sys.modules.pop(name, None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path
