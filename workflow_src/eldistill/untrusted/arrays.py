"""numpy values from untrusted files, rebuilt from raw bytes into fresh dtypes.

numpy pickles a dtype as `numpy.dtype(code, align, copy)` followed by a BUILD of its state; an array as
`_reconstruct(ndarray, (0,), b'b')` and a BUILD of (version, shape, dtype, fortran, raw bytes). Resolving
`numpy.dtype` itself would let a later BUILD change the item size of a dtype a live array already uses
(out-of-bounds reads: a crash, or heap bytes in an error message). Here a pickled dtype is a DtypeRecord,
a description from which every array gets its own fresh np.dtype, and a state may set a dtype's byte order
or the size of an unsized string dtype once, before any array uses it, never change its layout or size.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .pickles import UnsafePickleError

PLAIN_KINDS = "biufcSU"  # booleans, integers, floats, complex, byte and unicode strings; never objects
MAX_DIMS = 32


def fresh_dtype(spec: Any) -> np.dtype:
    """np.dtype(spec) when it is a plain numeric or string dtype (no Python objects, fields or sub-arrays)."""
    if not isinstance(spec, (str, np.dtype)):
        raise UnsafePickleError(f"a numpy dtype described by {type(spec).__name__} is not accepted")
    try:
        dtype = np.dtype(spec)
    except (TypeError, ValueError, OverflowError) as e:
        raise UnsafePickleError(f"numpy dtype {spec!r:.40} is not valid ({e})") from None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in PLAIN_KINDS:
        raise UnsafePickleError(f"numpy dtype {dtype} is not a plain numeric or string dtype; refusing it")
    return dtype


def check_shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, (tuple, list)) or len(shape) > MAX_DIMS:
        raise UnsafePickleError(f"an array shape must be a tuple of at most {MAX_DIMS} sizes")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise UnsafePickleError(f"array shape {tuple(shape)!r:.80} has a size that is not a non-negative integer")
    return tuple(shape)


def raw_bytes(data: Any, what: str) -> bytes:
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if isinstance(data, str):  # a Python 2 byte string, decoded as latin-1 by the unpickler
        return data.encode("latin1")
    raise UnsafePickleError(f"{what} holds {type(data).__name__} instead of raw bytes (object arrays are refused)")


def exact_bytes(data: Any, shape: tuple[int, ...], dtype: np.dtype, what: str) -> bytes:
    """The raw bytes of an array of `shape` and `dtype`, refused unless their length is exactly what it needs."""
    raw = raw_bytes(data, what)
    needed = math.prod(shape) * dtype.itemsize
    if len(raw) != needed:
        raise UnsafePickleError(f"{what} of shape {shape} and dtype {dtype} needs {needed} bytes, not {len(raw)}")
    return raw


class DtypeRecord:
    """What `numpy.dtype(code, align, copy)` built in a pickle: a description; arrays take fresh dtypes from it."""

    def __init__(self, code, align=False, copy=True):
        if isinstance(code, DtypeRecord):  # numpy.dtype(d) is d itself: a following BUILD would change d
            raise UnsafePickleError("numpy.dtype of a pickled dtype (a way to change it later); refusing it")
        self.dtype = fresh_dtype(code)
        self.used = self.stated = False

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
            raise UnsafePickleError("a numpy dtype state is not numpy's (version 3 or 4, 8 or 9 fields)")
        endian, subarray, names, fields, elsize = state[1:6]
        if subarray is not None or names is not None or fields is not None or state[8:] not in ((), (None,)):
            raise UnsafePickleError("a numpy dtype state adds fields, sub-arrays or metadata; refusing it")
        if endian not in ("<", ">", "|", "=") or not isinstance(elsize, int):
            raise UnsafePickleError(f"a numpy dtype state has byte order {endian!r:.10} and item size {elsize!r:.20}")
        base = self.dtype
        if base.itemsize == 0:  # an unsized string dtype ('U', 'S'): the state gives its size
            width = elsize // (4 if base.kind == "U" else 1)
            target = fresh_dtype(f"{base.kind}{width}") if elsize > 0 else base
        elif elsize in (-1, base.itemsize):
            target = base
        else:
            raise UnsafePickleError(f"a numpy dtype state changes the item size of {base} to {elsize}; refusing it")
        if endian in "<>" and target.byteorder != "|":
            target = target.newbyteorder(endian)
        if target != self.dtype and (self.used or self.stated):
            raise UnsafePickleError(f"a numpy dtype state changes dtype {self.dtype} after its first use; refusing it")
        self.dtype, self.stated = target, True


def dtype_of(record: Any) -> np.dtype:
    if not isinstance(record, DtypeRecord):
        raise UnsafePickleError(f"expected a numpy dtype, found {type(record).__name__}")
    record.used = True
    return record.dtype


class _NdarrayName:
    """numpy.ndarray as named in a pickle: only ever an argument of _reconstruct, never called."""


NDARRAY = _NdarrayName()


class PickledArray(np.ndarray):
    """An ndarray from numpy's pickle form, filled only once, by the checked __setstate__ below."""

    def __setstate__(self, state):
        if getattr(self, "_filled", False):
            raise UnsafePickleError("a numpy array's state is set twice; refusing it")
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafePickleError("a numpy array state is not numpy's (shape, dtype, fortran, bytes)")
        shape, dtype, fortran = check_shape(state[-4]), dtype_of(state[-3]), bool(state[-2])
        raw = exact_bytes(state[-1], shape, dtype, "a numpy array")
        super().__setstate__((1, shape, dtype, fortran, raw))
        self._filled = True


def reconstruct(subtype, shape, typecode):
    """numpy's `_reconstruct`: an empty array whose BUILD fills it (the given shape is ignored, never allocated)."""
    if subtype is not NDARRAY:
        raise UnsafePickleError("numpy _reconstruct of a class other than numpy.ndarray; refusing it")
    return PickledArray((0,), np.uint8)


def scalar(dtype, data=None):
    """numpy's `scalar(dtype, bytes)`: one value of a plain dtype from exactly its item size in bytes."""
    dtype = dtype_of(dtype)
    return np.frombuffer(exact_bytes(data, (), dtype, "a numpy scalar"), dtype)[0]


def frombuffer(buf, dtype, shape, order="C"):
    """numpy's `_frombuffer` (protocol 5): a fresh array from bytes that exactly fill `shape`."""
    dtype, shape = dtype_of(dtype), check_shape(shape)
    if order not in ("C", "F"):
        raise UnsafePickleError(f"numpy _frombuffer with order {order!r:.10}")
    raw = exact_bytes(buf, shape, dtype, "a numpy array")
    return np.frombuffer(bytearray(raw), dtype).reshape(shape, order=order)


def _latin1_bytes(text, encoding="latin1"):
    """`_codecs.encode(text, 'latin1')`: how protocols 0-2 store Python 3 bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode is accepted only as protocol 2 writes bytes (a str, 'latin1')")
    return text.encode("latin1")


def _bytes(*args):
    """`bytes()`: protocols 0-2 write empty bytes so; bytes(n) would allocate n bytes, so no argument is taken."""
    if args:
        raise UnsafePickleError("builtins.bytes is accepted only without arguments (empty bytes)")
    return b""


def _bytearray(data=b""):
    """`bytearray(bytes)` of protocols 0-4 (never bytearray(n), which would allocate n bytes)."""
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError("builtins.bytearray is accepted only with bytes")
    return bytearray(data)


PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "dtype"): DtypeRecord,
    ("numpy", "ndarray"): NDARRAY,
    ("_codecs", "encode"): _latin1_bytes,
    ("builtins", "bytes"): _bytes,
    ("builtins", "bytearray"): _bytearray,
    **{(f"{package}.multiarray", "_reconstruct"): reconstruct for package in ("numpy.core", "numpy._core")},
    **{(f"{package}.multiarray", "scalar"): scalar for package in ("numpy.core", "numpy._core")},
    **{(f"{package}.numeric", "_frombuffer"): frombuffer for package in ("numpy.core", "numpy._core")},
}
"""Globals numpy's pickles of plain arrays, dtypes and scalars name (numpy 1.x and 2.x module names), plus
the bytes constructors protocols 0-2 use."""


# --- .npz files -----------------------------------------------------------------------------------------

NPZ_INFLATION = 16  # a member may inflate to at most this many times the archive's size (plus NPZ_SLACK)
NPZ_SLACK = 1 << 20


def read_npy(member, size: int, what: str) -> np.ndarray:
    """The array of an `.npy` stream of `size` bytes, its header checked against that size before any read."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise UnsafePickleError(f"{what}: .npy format version {version} is not accepted")
    shape, dtype = check_shape(shape), fresh_dtype(dtype)
    needed = math.prod(shape) * dtype.itemsize
    if member.tell() + needed != size:  # before reading: numpy would allocate what the header claims
        raise UnsafePickleError(f"{what}: its header claims {shape} {dtype} ({needed} bytes) but it holds {size}")
    raw = member.read(needed)
    array = np.frombuffer(bytearray(exact_bytes(raw, shape, dtype, what)), dtype)
    return array.reshape(shape, order="F" if fortran else "C")


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an `.npz` (plain dtypes only), each checked against its header before it is read."""
    path = Path(path)
    limit = NPZ_INFLATION * path.stat().st_size + NPZ_SLACK
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            declared = sum(m.file_size for m in members)
            if declared > limit:
                raise UnsafePickleError(
                    f"{path}: its members inflate to {declared} bytes, more than the {limit} a "
                    f"{path.stat().st_size}-byte file may (compressed data is bounded by the file size)"
                )
            arrays = {}
            for m in members:
                if not m.filename.endswith(".npy") or m.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise UnsafePickleError(f"{path}: member {m.filename!r} is not an .npy array numpy writes")
                with archive.open(m) as member:
                    arrays[m.filename[: -len(".npy")]] = read_npy(member, m.file_size, f"{path} member {m.filename}")
            return arrays
    except UnsafePickleError as e:
        raise UnsafePickleError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from None
