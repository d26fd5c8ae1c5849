"""torch data from untrusted files: storages and tensors inside published pickles, and our own `.pt` archives.

Published EDM/EDM2 pickles hold each storage as `torch.storage._load_from_bytes(blob)`, the blob in torch's
legacy format (five small pickles, then an int64 element count and the raw bytes). torch would allocate
the count the blob claims before reading; here the blob is parsed with the restricted unpickler and the
storage built from exactly the bytes present. Tensors are views of storages: a view may not show more
elements than its storage holds past its offset (a zero stride would let 700 bytes become gigabytes).

Our `.pt` files are zip archives from torch.save. `load_torch_file` checks the archive before torch.load
(weights_only) sees it: every entry stored uncompressed (torch.save never compresses, so nothing inflates),
declared sizes within the file, and a dry run of data.pkl with inert objects: only the globals our files
use, each storage entry exactly as large as its record says, each tensor view within its storage. Files in
torch's legacy format (torch < 1.6, e.g. the published VGG16 weights LPIPS uses) get the same dry run, and
each storage must hold its recorded element count before torch.load allocates it.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from .arrays import PICKLE_GLOBALS as NUMPY_PICKLE_GLOBALS
from .pickles import UnsafePickleError, load_pickle

STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001  # torch.serialization.PROTOCOL_VERSION


class StorageKind:
    """`torch.FloatStorage` and friends as named in a pickle: only their element type."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


STORAGE_KINDS = {("torch", name): StorageKind(dtype) for name, dtype in STORAGE_DTYPES.items()}


def _index(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UnsafePickleError(f"{what} {value!r:.40} is not a non-negative integer")
    return value


def check_view(available: int, offset: Any, size: Any, stride: Any) -> tuple[int, tuple, tuple]:
    """(offset, size, stride) of a tensor view that stays inside a storage of `available` elements and shows
    no more elements than the storage holds past the offset."""
    offset = _index(offset, "a tensor's storage offset")
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)) or len(size) != len(stride):
        raise UnsafePickleError("a tensor's size and stride are not two tuples of one length")
    if len(size) > 64:
        raise UnsafePickleError("a tensor has more than 64 dimensions")
    size = tuple(_index(n, "a tensor size") for n in size)
    stride = tuple(_index(n, "a tensor stride") for n in stride)
    numel = math.prod(size)
    if numel:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= available:
            raise UnsafePickleError(f"a tensor of size {size} reaches element {last} of a storage of {available}")
        if numel > available - offset:
            raise UnsafePickleError(
                f"a tensor of size {size} and stride {stride} shows {numel} elements, more than the "
                f"{available - offset} its storage holds (overlapping or zero strides); refusing it"
            )
    return offset, size, stride


def rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """`torch._utils._rebuild_tensor_v2` on a storage we built, after check_view; hooks are dropped."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise UnsafePickleError("torch._utils._rebuild_tensor_v2 called without a storage")
    offset, size, stride = check_view(storage._size(), storage_offset, size, stride)
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, bool(requires_grad), OrderedDict())


def rebuild_parameter(data, requires_grad=True, backward_hooks=None, state=None):
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError("torch._utils._rebuild_parameter called without a tensor")
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


def _legacy_storage_id(pid: Any, source: str) -> tuple[str, torch.dtype, int]:
    """(key, dtype, numel) of a legacy-format storage record ('storage', kind, key, location, numel, None)."""
    ok = isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage" and isinstance(pid[1], StorageKind)
    if not ok or not isinstance(pid[2], str) or pid[5] is not None:
        raise UnsafePickleError(f"{source}: a persistent id that is not a plain storage record ({pid!r:.80})")
    return pid[2], pid[1].dtype, _index(pid[4], f"{source}: a storage's element count")


def read_legacy(f, end: int, source: str, allowed, persistent, fallback=None) -> tuple[Any, dict]:
    """torch's legacy format (the storage blobs of published pickles, pre-1.6 `.pth` files): the object, with
    `persistent(key, dtype, numel)` standing for each storage, and {key: raw bytes position} of the storages,
    each checked to hold exactly its recorded element count. Nothing is allocated from a recorded size."""
    if load_pickle(f, source, {}, end) != LEGACY_MAGIC or load_pickle(f, source, {}, end) != LEGACY_PROTOCOL:
        raise UnsafePickleError(f"{source}: not torch's legacy format")
    info = load_pickle(f, source, {}, end)
    if not isinstance(info, dict) or info.get("little_endian") is not True:
        raise UnsafePickleError(f"{source}: not a little-endian torch legacy file")
    records: dict[str, tuple[torch.dtype, int]] = {}

    def persistent_id(pid):
        key, dtype, numel = _legacy_storage_id(pid, source)
        if records.setdefault(key, (dtype, numel)) != (dtype, numel):
            raise UnsafePickleError(f"{source}: storage {key!r} is recorded with two sizes")
        return persistent(key, dtype, numel)

    root = load_pickle(f, source, allowed, end, fallback=fallback, persistent_load=persistent_id)
    keys = load_pickle(f, source, {}, end)
    if not isinstance(keys, list) or sorted(keys) != sorted(records):
        raise UnsafePickleError(f"{source}: the storage list does not match the storages the object uses")
    positions = {}
    for key in keys:
        dtype, numel = records[key]
        count, nbytes = int.from_bytes(f.read(8), "little", signed=True), numel * dtype.itemsize
        if count != numel or end - f.tell() < nbytes:
            raise UnsafePickleError(
                f"{source}: storage {key!r} records {numel} {dtype} elements ({nbytes} bytes), holds {count} "
                f"and at most {end - f.tell()} bytes"
            )
        positions[key] = f.tell()
        f.seek(nbytes, 1)
    return root, positions


def storage_from_legacy_bytes(blob: Any) -> torch.storage.TypedStorage:
    """`torch.storage._load_from_bytes(blob)`, read with the restricted unpickler and built from the bytes present."""
    if not isinstance(blob, (bytes, bytearray)):
        raise UnsafePickleError("torch.storage._load_from_bytes called with a non-bytes argument")
    f, source, end = io.BytesIO(blob), "embedded torch storage", len(blob)
    root, positions = read_legacy(f, end, source, STORAGE_KINDS, _StorageRef)
    if not isinstance(root, _StorageRef) or len(positions) != 1 or f.tell() != end:
        raise UnsafePickleError(f"{source}: not one plain storage")
    dtype, nbytes = root.dtype, root.numel * root.dtype.itemsize
    f.seek(positions[root.key])
    data = torch.frombuffer(bytearray(f.read(nbytes)), dtype=dtype) if nbytes else torch.empty(0, dtype=dtype)
    return torch.storage.TypedStorage(wrap_storage=data.untyped_storage(), dtype=dtype, _internal=True)


CONTAINER_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}

PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    **NUMPY_PICKLE_GLOBALS,
    **CONTAINER_GLOBALS,
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): storage_from_legacy_bytes,
}
"""Globals a plain pickle of numpy values, containers and torch tensors names, each rebuilt safely."""


# --- our own .pt files ----------------------------------------------------------------------------------


class _Inert:
    """What any allowed global stands for in the dry run: accepts any arguments, does nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class _StorageRef:
    """A storage as the dry run sees it: its element type and count, no data."""

    def __init__(self, key: str, dtype: torch.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


def _dry_tensor(storage, storage_offset, size, stride, *rest):
    if not isinstance(storage, _StorageRef):
        raise UnsafePickleError("torch._utils._rebuild_tensor_v2 called without a storage")
    check_view(storage.numel, storage_offset, size, stride)
    return _Inert()


def _torch_dtype(module: str, name: str):
    """`torch.float16` and the other dtypes, as torch pickles them (a global naming the dtype)."""
    return _Inert if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype) else None


DRY_RUN_GLOBALS: dict[tuple[str, str], Any] = {
    **STORAGE_KINDS,
    **CONTAINER_GLOBALS,
    ("torch._utils", "_rebuild_tensor_v2"): _dry_tensor,
    ("torch._utils", "_rebuild_tensor"): _dry_tensor,  # the same with no requires_grad (torch < 1.0 files)
    ("torch._utils", "_rebuild_parameter"): _Inert,
    ("torch._utils", "_rebuild_parameter_with_state"): _Inert,
    ("torch", "Size"): tuple,
    ("torch", "device"): _Inert,
}
"""The globals eldistill's own files use; torch.load's weights_only allowlist is wider."""


def _storage_records(data: bytes, source: str) -> dict[str, tuple[torch.dtype, int]]:
    """{key: (dtype, numel)} of data.pkl's storages, from a dry run that builds only inert objects."""
    records: dict[str, tuple[torch.dtype, int]] = {}

    def persistent(pid):
        ok = isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], StorageKind)
        if not ok or not isinstance(pid[2], str) or not isinstance(pid[3], str):
            raise UnsafePickleError(f"{source}: data.pkl has a persistent id that is not a storage ({pid!r:.80})")
        record = (pid[1].dtype, _index(pid[4], "a storage's element count"))
        if records.setdefault(pid[2], record) != record:
            raise UnsafePickleError(f"{source}: storage {pid[2]!r} is recorded with two sizes")
        return _StorageRef(pid[2], *record)

    load_pickle(io.BytesIO(data), source, DRY_RUN_GLOBALS, fallback=_torch_dtype, persistent_load=persistent)
    return records


def check_torch_file(f, source: str) -> None:
    """Refuse, before torch.load, a file that would inflate, over-allocate or show tensors past storages:
    a torch.save zip archive, or torch's legacy format (files from torch < 1.6, e.g. published VGG weights)."""
    size = f.seek(0, 2)
    f.seek(0)
    is_zip = zipfile.is_zipfile(f)
    f.seek(0)
    if is_zip:
        check_torch_archive(f, size, source)
    else:
        try:
            read_legacy(f, size, source, DRY_RUN_GLOBALS, _StorageRef, fallback=_torch_dtype)
        except UnsafePickleError:
            raise
        except ValueError as e:
            raise ValueError(f"{source}: not a torch.save archive nor torch's legacy format ({e})") from None


def check_torch_archive(f, size: int, source: str) -> None:
    """The zip checks of the module docstring."""
    try:
        archive = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ValueError(f"{source}: not a torch.save archive (truncated or another format: {e})") from None
    members = archive.infolist()
    for m in members:
        if m.compress_type != zipfile.ZIP_STORED:
            raise UnsafePickleError(
                f"{source}: archive entry {m.filename} is compressed ({m.compress_size} bytes declared to inflate "
                f"to {m.file_size}); torch.save never compresses, refusing it"
            )
    declared = sum(m.file_size for m in members)
    if declared > size:
        raise UnsafePickleError(f"{source}: archive entries declare {declared} bytes in a {size}-byte file")
    pickles = [m for m in members if m.filename.endswith("data.pkl") and m.filename.count("/") == 1]
    if len(pickles) != 1:
        raise ValueError(f"{source}: not a torch.save archive (no single <name>/data.pkl)")
    prefix = pickles[0].filename[: -len("data.pkl")]
    try:
        data = archive.read(pickles[0])
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ValueError(f"{source}: damaged archive entry {pickles[0].filename} ({e})") from None
    for key, (dtype, numel) in _storage_records(data, source).items():
        name, nbytes = f"{prefix}data/{key}", numel * dtype.itemsize
        try:
            stored = archive.getinfo(name).file_size
        except KeyError:
            raise ValueError(f"{source}: archive has no entry {name} for storage {key!r}") from None
        if stored != nbytes:
            raise UnsafePickleError(
                f"{source}: storage {key!r} records {numel} {dtype} elements ({nbytes} bytes) but its entry "
                f"holds {stored} bytes; refusing it"
            )


def load_torch_file(path: str | Path, map_location: Any = "cpu", what: str = "torch file") -> Any:
    """torch.load(path, weights_only=True) after check_torch_archive. A missing file raises FileNotFoundError;
    a damaged or hostile one a ValueError naming the file."""
    path = Path(path)
    with open(path, "rb") as f:  # one open file: what is checked is what torch reads, even if the path is replaced
        check_torch_file(f, str(path))
        f.seek(0)
        try:
            return torch.load(f, map_location=map_location, weights_only=True)
        except MemoryError:
            raise
        except Exception as e:  # torch raises many types (RuntimeError, UnpicklingError, ...) on damaged files
            raise ValueError(f"{path}: not a readable {what} ({type(e).__name__}: {e})") from None
