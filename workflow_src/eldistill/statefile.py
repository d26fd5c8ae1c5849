"""Resumable training states that are never trusted blindly.

`save_state` writes the record with its content digest (eldistill.integrity) through a temporary file,
reads the temporary file back and checks it, and only then renames it into place, moving the state it
replaces to `<name>.previous.pt`. `load_state` checks the digest of the newest state; when the newest is
damaged it says so, moves it aside (`<name>.pt.damaged`) and falls back to the previous state.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from eldistill.integrity import DamagedFileError, check_digest, with_digest
from eldistill.io import atomic_torch_save
from eldistill.untrusted.torch_files import load_torch_file


def previous_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f"{path.stem}.previous{path.suffix}")


def damaged_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".damaged")


def read_state(path: str | Path, state_format: str) -> dict[str, Any]:
    """The checked record of one state file; DamagedFileError (a ValueError) names the file and the fault."""
    path = Path(path)
    try:
        record = load_torch_file(path, "cpu", "training state")  # bounded: a damaged file cannot exhaust memory
    except Exception as e:  # torch raises many types on damaged files
        raise DamagedFileError(f"{path}: unreadable training state ({type(e).__name__}: {e})") from None
    if not isinstance(record, dict) or record.get("format") != state_format:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise DamagedFileError(f"{path}: not a state of format {state_format!r} (found {found!r})")
    check_digest(record, str(path))
    return record


def save_state(record: dict[str, Any], path: str | Path) -> Path:
    """Write `record` (with its digest) atomically, verified before it replaces the current state, which is
    kept as the previous state."""
    record = with_digest(record)
    state_format = record["format"]
    return atomic_torch_save(
        record, path, verify=lambda tmp: read_state(tmp, state_format), keep_previous=previous_path(path)
    )


def load_state(path: str | Path, state_format: str, who: str = "train") -> tuple[dict[str, Any], Path] | None:
    """(record, the file it came from) of the newest intact state, or None when there is no state at all.
    A damaged newest state is reported on stderr and moved aside; when no state is intact, DamagedFileError
    lists every fault and nothing is moved (the files stay for inspection)."""
    path = Path(path)
    candidates = [p for p in (path, previous_path(path)) if p.exists()]
    if not candidates:
        return None
    faults = []
    for candidate in candidates:
        try:
            record = read_state(candidate, state_format)
        except DamagedFileError as e:
            faults.append((candidate, str(e)))
            continue
        for bad, fault in faults:
            os.replace(bad, damaged_path(bad))
            print(
                f"{who}: {fault}; moved it to {damaged_path(bad).name} and resuming from the previous state "
                f"{candidate.name} ({record.get('images_seen', '?')} images)",
                file=sys.stderr,
            )
        if not faults and candidate != path:  # killed between the two renames of a save
            print(f"{who}: {path.name} is missing; resuming from the previous state {candidate.name}", file=sys.stderr)
        return record, candidate
    listed = "; ".join(fault for _, fault in faults)
    raise DamagedFileError(f"no intact training state in {path.parent}: {listed}; move these files away to start over")
