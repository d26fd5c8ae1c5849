"""Network checkpoints: our own `.pt` format, and the published EDM/EDM2 pickles read without running them.

Our file (loadable with `torch.load(..., weights_only=True)`):
    {"format": "eldistill-net-v1", "config": net.config, "state_dict": {...}, "meta": {...}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .io import atomic_torch_save
from .nets import build_network

FORMAT = "eldistill-net-v1"


def save_network(path: str | Path, net: torch.nn.Module, meta: dict[str, Any] | None = None) -> Path:
    """Write `net` (config + float state dict) atomically; `meta` must be plain data (kind, counters, ids)."""
    if not hasattr(net, "config"):
        raise ValueError(f"{path}: the network has no 'config'; build it with eldistill.nets.build_network")
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    record = {"format": FORMAT, "config": dict(net.config), "state_dict": state, "meta": dict(meta or {})}
    return atomic_torch_save(record, path)


def read_network_file(path: str | Path, map_location="cpu") -> dict[str, Any]:
    """The checked record of one of our network files (no network built)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: network file not found")
    try:
        record = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types (KeyError, EOFError, RuntimeError...) on damaged files
        raise ValueError(f"{path}: not a readable eldistill network file (truncated or foreign: {e})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{path}: not an eldistill network file (format {found!r}, expected {FORMAT!r})")
    for key in ("config", "state_dict", "meta"):
        if not isinstance(record.get(key), dict):
            raise ValueError(f"{path}: key {key!r} is missing or not a mapping")
    return record


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
