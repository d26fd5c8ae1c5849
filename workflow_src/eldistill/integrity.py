"""Content digests of the records we save with torch.save (network files, training states).

torch does not check the CRCs of its zip files, so a flipped bit inside a tensor loads silently. Every record
we write carries `"digest": "sha256:<hex>"` over its whole content: the structure (keys, types, shapes,
dtypes, plain values) and every tensor's raw bytes. Loading recomputes it; a mismatch means the file was
damaged after it was written, and the caller refuses it (or falls back to an older copy).
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import torch

DIGEST_KEY = "digest"
ALGORITHM = "sha256"


class DamagedFileError(ValueError):
    """A saved record's content no longer matches its digest (or cannot be read at all)."""


def content_digest(obj: Any) -> str:
    """sha256 over a nested record of dicts, lists, tuples, tensors and plain values, in a fixed order."""
    h = hashlib.sha256()
    _feed(h, obj)
    return f"{ALGORITHM}:{h.hexdigest()}"


def _feed(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        if t.numel():
            raw = t.cpu().contiguous().reshape(-1).view(torch.uint8)  # any dtype, bf16 included
            h.update(memoryview(raw.numpy()))
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}:".encode())
        for item in obj:
            _feed(h, item)
    elif isinstance(obj, float):
        h.update(b"F" + struct.pack("<d", obj))  # exact bits: a changed float changes the digest
    elif obj is None or isinstance(obj, (bool, int, str, bytes, torch.dtype, torch.device, torch.Size)):
        text = repr(obj).encode()
        h.update(f"{type(obj).__name__}{len(text)}:".encode() + text)
    else:
        raise TypeError(f"content_digest: cannot digest a {type(obj).__name__}")


def with_digest(record: dict) -> dict:
    """`record` plus its digest (over everything but the digest itself)."""
    body = {k: v for k, v in record.items() if k != DIGEST_KEY}
    return {**body, DIGEST_KEY: content_digest(body)}


def check_digest(record: dict, where: str) -> bool:
    """Raise DamagedFileError when `record`'s content differs from its stored digest. Returns False for a record
    without a digest (written before digests existed: nothing to check), True when it was checked."""
    stored = record.get(DIGEST_KEY)
    if stored is None:
        return False
    body = {k: v for k, v in record.items() if k != DIGEST_KEY}
    if not isinstance(stored, str) or content_digest(body) != stored:
        raise DamagedFileError(f"{where}: damaged: its content does not match the digest stored when it was written")
    return True
