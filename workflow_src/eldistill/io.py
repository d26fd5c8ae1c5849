"""Atomic file writes: a crash or a kill mid-write never leaves a truncated file under the final name.

Files are created with the process umask (0644 under umask 022), as any other tool would create them, so a
group sharing a project folder can read the results. A write that fails for lack of space raises
`DiskFullError` naming the file and the free space; the previous file under that name stays as it was.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # disk full, quota exceeded, file-size limit


class DiskFullError(OSError):
    """A write ran out of space (disk, quota or file-size limit); the message names the file and the free space."""


def process_umask() -> int:
    """The umask, read without changing it (os.umask can only be read by setting it, a race with threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_prefix(path: Path) -> str:
    """The name prefix of `path`'s temporary files (`.NAME.<random>.tmp` in the same folder)."""
    return f".{path.name}."


def _atomic(
    path: str | Path,
    write: Callable[[Any], None],
    verify: Callable[[Path], None] | None = None,
    keep_previous: str | Path | None = None,
) -> Path:
    """Write through a temporary file in the same folder: fsync, `verify(tmp)` (may raise), then rename it over
    `path` (first moving an existing `path` to `keep_previous`, when given) and fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~process_umask())  # mkstemp makes 0600, and the mode survives the rename
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(Path(tmp))
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        no_space = _no_space(e)
        if no_space is not None:
            raise DiskFullError(no_space.errno, _no_space_message(path, no_space)) from None
        raise
    _fsync_dir(path.parent)
    return path


def _no_space(e: BaseException) -> OSError | None:
    """The out-of-space OSError behind `e`: torch's zip writer swallows it and raises an enforce error, keeping the
    OSError only as the exception's context."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:
            return e
        e = e.__cause__ or e.__context__
    return None


def _no_space_message(path: Path, error: OSError) -> str:
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    previous = "the previous file is unchanged" if path.exists() else "nothing was written"
    return f"{path}: cannot write it: {os.strerror(error.errno)} ({free} on {path.parent}); {previous}"


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a crash right after it must not bring the old file back)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory
    finally:
        os.close(fd)


def atomic_torch_save(
    obj: Any,
    path: str | Path,
    verify: Callable[[Path], None] | None = None,
    keep_previous: str | Path | None = None,
) -> Path:
    """torch.save to a temporary file in the same folder, fsync, optionally verify it, then rename over `path`."""
    import torch  # here, not at the top: the report verbs use this module and need no torch

    return _atomic(path, lambda f: torch.save(obj, f), verify, keep_previous)


def atomic_write_bytes(data: bytes, path: str | Path) -> Path:
    return _atomic(path, lambda f: f.write(data))


def atomic_write_json(obj: Any, path: str | Path) -> Path:
    return atomic_write_bytes((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), path)


def remove_orphaned_temps(folder: str | Path, names: list[str] | None = None) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes left in `folder` (of the files `names`, or of
    any file). Call it only where no other process writes at the same time (e.g. under the state lock)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.glob(".*.tmp"):
        if p.is_file() and (names is None or any(p.name.startswith(temp_prefix(folder / n)) for n in names)):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def append_jsonl(record: dict[str, Any], path: str | Path) -> None:
    """Append one JSON line (a log; a torn last line is skipped by read_jsonl)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a log, one per line. A line torn by a kill mid-append is skipped; a line that parses
    to something other than an object was not written by us and raises ValueError naming the file and line."""
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill mid-append
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {number} is not a JSON object: {line[:80]}")
        records.append(record)
    return records
