"""Network checkpoints: our own `.pt` format, and the published EDM/EDM2 pickles read without running them.

Our file (loadable with `torch.load(..., weights_only=True)`):
    {"format": "eldistill-net-v1", "config": net.config, "state_dict": {...}, "meta": {...}, "digest": "sha256:..."}
The digest (eldistill.integrity) is checked on every read; files written before digests existed have none.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .integrity import check_digest, with_digest
from .io import atomic_torch_save
from .nets import build_network
from .nets.precond import jsonable
from .untrusted import UnsafePickleError as UnsafePickleError  # re-exported: callers catch it from here
from .untrusted import load_pickle
from .untrusted.torch_files import PICKLE_GLOBALS as TORCH_PICKLE_GLOBALS
from .untrusted.torch_files import load_torch_file

FORMAT = "eldistill-net-v1"


def save_network(path: str | Path, net: torch.nn.Module, meta: dict[str, Any] | None = None) -> Path:
    """Write `net` (config + float state dict) atomically; `meta` must be plain data (kind, counters, ids)."""
    if not hasattr(net, "config"):
        raise ValueError(f"{path}: the network has no 'config'; build it with eldistill.nets.build_network")
    try:  # meta must survive torch.load(weights_only=True): plain numbers, strings, lists, dicts
        json.dumps(meta or {})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: 'meta' must be plain JSON-like data ({e})") from None
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    record = with_digest({"format": FORMAT, "config": dict(net.config), "state_dict": state, "meta": dict(meta or {})})
    return atomic_torch_save(record, path, verify=read_network_file)  # read back before it takes the name


def read_network_file(path: str | Path, map_location="cpu") -> dict[str, Any]:
    """The checked record of one of our network files (no network built)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: network file not found")
    try:
        record = load_torch_file(path, map_location, "eldistill network file")
    except Exception as e:  # torch raises many types (KeyError, EOFError, RuntimeError...) on damaged files
        raise ValueError(f"{path}: not a readable eldistill network file (truncated or foreign: {e})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{path}: not an eldistill network file (format {found!r}, expected {FORMAT!r})")
    for key in ("config", "state_dict", "meta"):
        if not isinstance(record.get(key), dict):
            raise ValueError(f"{path}: key {key!r} is missing or not a mapping")
    check_digest(record, str(path))
    return record


def require_kind(path: str | Path, meta: dict[str, Any], kind: str, role: str) -> None:
    """Refuse a network file whose recorded kind is not `kind` (e.g. a generator snapshot given as a teacher)."""
    found = meta.get("kind")
    if found != kind:
        raise ValueError(f"{role}: {path} is a network file of kind {found!r}; '{role}' needs one of kind {kind!r}")


def load_network(path: str | Path, map_location="cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """(net, meta) from one of our network files; strict key matching."""
    record = read_network_file(path, map_location)
    try:
        net = build_network(record["config"])
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    try:
        net.load_state_dict(record["state_dict"], strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match the recorded config: {e}") from None
    return net.to(map_location) if isinstance(map_location, (str, torch.device)) else net, record["meta"]


# --- the published EDM / EDM2 pickles, read without running them (anchors B.2) -------------------------


class PersistentRecord:
    """What `torch_utils.persistence._reconstruct_persistent_obj(meta)` would have built, kept as data.

    meta = {type, version, module_src, class_name, state}; module_src is never executed."""

    def __init__(self, meta):
        self.meta = meta if isinstance(meta, dict) else {}

    @property
    def class_name(self) -> str:
        return str(self.meta.get("class_name", ""))

    @property
    def state(self) -> dict:
        state = self.meta.get("state")
        return state if isinstance(state, dict) else {}


class ModuleStub:
    """Stands in for a plain torch.nn container (ModuleDict, ModuleList, ...): keeps its pickled state only."""

    def __init__(self, *args, **kwargs):
        self.state = {}

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {}


class PickledDict(dict):
    """dnnlib.EasyDict as a plain dict (any attribute state is folded into the items)."""

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.update(state)


class Inert:
    """What `builtins.getattr` yields inside a pickle (bound hook methods): nothing callable, nothing looked up."""

    def __init__(self, *args):
        pass


def _module_stub(module: str, name: str):
    """Plain torch.nn containers (ModuleDict, ModuleList, ...) become inert stubs; anything else is refused."""
    if module.startswith("torch.nn.modules.") and name.isidentifier() and not name.startswith("_"):
        return ModuleStub
    return None


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **TORCH_PICKLE_GLOBALS,  # tensors, storages, numpy values and containers, each rebuilt from checked bytes
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentRecord,
    ("dnnlib.util", "EasyDict"): PickledDict,
    ("dnnlib", "EasyDict"): PickledDict,
    ("builtins", "getattr"): Inert,  # bound hook methods in SiDA-EDM2 pickles; never a real getattr
}


def read_edm_pickle(path: str | Path) -> Any:
    """The raw contents of an EDM/EDM2 pickle, with persistent objects as PersistentRecord (no code run).

    The restricted unpickler of eldistill.untrusted bounds what the file can make us allocate."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: pickle not found")
    with open(path, "rb") as f:
        return load_pickle(f, str(path), ALLOWED_GLOBALS, fallback=_module_stub)


def _module_state(obj) -> dict:
    if isinstance(obj, PersistentRecord):
        return obj.state
    if isinstance(obj, ModuleStub):
        return obj.state
    return {}


def collect_state_dict(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Walk a pickled module tree: parameters and persistent buffers under dotted names (like state_dict())."""
    state = _module_state(obj)
    out: dict[str, torch.Tensor] = {}
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            out[prefix + name] = value.detach()
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in non_persistent:
            out[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(collect_state_dict(child, f"{prefix}{name}."))
    return out


# Upstream constructors' default `model_type` (used when a pickle's recorded kwargs leave it out).
SOURCE_DEFAULT_MODEL_TYPE = {
    "EDMPrecond": "DhariwalUNet",
    "EDMPrecond_EncoderDecoder": "SongUNet",  # SiDA
    "VPPrecond": "SongUNet",
    "VEPrecond": "SongUNet",
}


def _network_config(record: PersistentRecord, source: str) -> dict[str, Any]:
    from .nets import CLASS_ALIASES, PRECONDS

    name = CLASS_ALIASES.get(record.class_name, record.class_name)
    if name not in PRECONDS:
        raise ValueError(f"{source}: network class {record.class_name!r} is not one this suite can rebuild")
    kwargs = dict(record.state.get("_init_kwargs") or {})
    args = tuple(record.state.get("_init_args") or ())
    if args:  # positional constructor arguments: name them from our (identical) signature
        names = [p for p in inspect.signature(PRECONDS[name]).parameters if p not in ("model_kwargs", "unet_kwargs")]
        kwargs.update(zip(names, args))
    kwargs.pop("class_name", None)
    if name != "EDM2Precond" and "model_type" not in kwargs:  # the source class's default backbone
        kwargs["model_type"] = SOURCE_DEFAULT_MODEL_TYPE.get(record.class_name, "SongUNet")
    return jsonable({"class_name": name, **kwargs})


def load_edm_pickle(path: str | Path, key: str = "ema") -> torch.nn.Module:
    """Our network, with the weights of a published EDM/EDM2 pickle (float32, strict keys, eval mode)."""
    return load_edm_pickle_with_info(path, key)[0]


def load_edm_pickle_with_info(path: str | Path, key: str = "ema") -> tuple[torch.nn.Module, dict[str, Any]]:
    """(net, info): info records where the weights came from and EDM2's latent encoder settings."""
    path = Path(path)
    data = read_edm_pickle(path)
    record = data.get(key) if isinstance(data, dict) else data
    if not isinstance(record, PersistentRecord):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: no persistent network under key {key!r} (found {found})")
    config = _network_config(record, str(path))
    state = collect_state_dict(record)
    dtypes = sorted({str(v.dtype) for v in state.values()})
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}  # EDM2 stores fp16
    try:
        net = build_network(config)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match {config['class_name']}: {e}") from None
    info: dict[str, Any] = {"source": path.name, "source_class": record.class_name, "source_dtypes": dtypes}
    encoder = data.get("encoder") if isinstance(data, dict) else None
    if isinstance(encoder, PersistentRecord):
        enc = encoder.state
        info["encoder"] = jsonable(
            {"class_name": encoder.class_name, **{k: enc[k] for k in ("vae_name", "scale", "bias") if k in enc}}
        )
    if isinstance(data, dict) and isinstance(data.get("dataset_kwargs"), dict):
        info["dataset_kwargs"] = jsonable({k: v for k, v in data["dataset_kwargs"].items() if _plain(v)})
    return net.eval(), info


def _plain(value) -> bool:
    return isinstance(value, (str, int, float, bool, type(None), list, tuple, np.generic))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# EDM2's post-hoc EMA reconstructions are named edm2-img512-<size>-<training kimg>-<EMA std>.pkl
POSTHOC_EMA_NAME = re.compile(r"^edm2-img\d+-[a-z]+-(\d+)-(\d+\.\d+)(?:\.pkl)?$")


def posthoc_ema_of(name: str) -> dict[str, Any] | None:
    """{"kimg", "std"} of an EDM2 post-hoc reconstruction's file name, else None."""
    match = POSTHOC_EMA_NAME.match(Path(name).name)
    return {"kimg": int(match[1]), "std": float(match[2])} if match else None


def convert_teacher(src: str | Path, out: str | Path, key: str = "ema") -> Path:
    """Published pickle -> our network file (meta kind 'teacher', with the source's sha256 and, for EDM2, the
    post-hoc EMA choice its name records)."""
    net, info = load_edm_pickle_with_info(src, key)
    meta = {"kind": "teacher", "source_sha256": sha256_file(src), **info}
    posthoc = posthoc_ema_of(Path(src).name)
    if posthoc:
        meta["posthoc_ema"] = posthoc
    return save_network(out, net, meta)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN.pkl", help="published EDM/EDM2 pickle (never executed)")
    parser.add_argument("output", metavar="OUT.pt", help="our network file (torch.load weights_only=True)")
    parser.add_argument("--key", default="ema", help="which network of the pickle to convert (default: ema)")


def run(args: argparse.Namespace) -> int:
    try:
        path = convert_teacher(args.input, args.output, args.key)
    except ValueError as e:  # includes UnsafePickleError: say which file and which global, no traceback
        print(f"eldistill convert-teacher: {e}", file=sys.stderr)
        return 1
    net, meta = load_network(path)
    print(
        f"{args.input} -> {path}: {meta['source_class']} as {net.config['class_name']}, "
        f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f} M params, source sha256 {meta['source_sha256'][:12]}"
    )
    return 0
