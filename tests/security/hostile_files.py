"""Builders of hostile files, one per class of attack on our loaders, each small (bytes to a few MB).

Pickles are assembled opcode by opcode (pickle.Pickler cannot write most of these); torch archives and
.npz files are written by a minimal zip writer that can store a pre-deflated member."""

from __future__ import annotations

import io
import pickle
import struct
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

TIB_ELEMENTS = 1 << 40
GIB = 1 << 30

# --- a protocol-3 opcode assembler ------------------------------------------------------------------------


def proto(n=3):
    return b"\x80" + bytes([n])


def glob(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def text(s):
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def raw(b):
    return b"B" + struct.pack("<I", len(b)) + b


def num(n):
    return b"J" + struct.pack("<i", n)


def put(i):
    return b"r" + struct.pack("<I", i)


def get(i):
    return b"j" + struct.pack("<I", i)


def tup(*items):
    return b"(" + b"".join(items) + b"t"


NONE, FALSE, TRUE, REDUCE, BUILD, STOP = b"N", b"\x89", b"\x88", b"R", b"b", b"."


def dtype_op(code, state_elsize=-1, byteorder="|"):
    """numpy.dtype(code, False, True) + BUILD of its state, as numpy pickles every dtype."""
    state = tup(num(3), text(byteorder), NONE, NONE, NONE, num(state_elsize), num(-1), num(0))
    return glob("numpy", "dtype") + tup(text(code), FALSE, TRUE) + REDUCE + b"" + put(1) + state + BUILD


def array_op(dtype_ops, shape, data):
    """numpy's pickle of an array: _reconstruct(ndarray, (0,), b'b') + BUILD (1, shape, dtype, False, data)."""
    head = glob("numpy._core.multiarray", "_reconstruct") + tup(glob("numpy", "ndarray"), tup(num(0)), raw(b"b"))
    return head + REDUCE + tup(num(1), tup(*(num(n) for n in shape)), dtype_ops, FALSE, raw(data)) + BUILD


def as_dict(**items):
    body = b"".join(text(k) + v for k, v in items.items())
    return b"}(" + body + b"u"


def refs_pickle(mu_ops, sigma_ops):
    """EDM2's reference layout {'fid': {'mu', 'sigma'}} around the given values."""
    return proto() + as_dict(fid=as_dict(mu=mu_ops, sigma=sigma_ops)) + STOP


def kwargs_pickle(value_ops):
    """An EDM pickle whose network record's constructor kwargs hold `value_ops` (what convert-teacher reads)."""
    state = as_dict(_init_kwargs=as_dict(channel_mult=value_ops), _init_args=b")")
    meta = as_dict(type=text("class"), version=num(6), module_src=text(""), class_name=text("EDMPrecond"), state=state)
    record = glob("torch_utils.persistence", "_reconstruct_persistent_obj") + tup(meta) + REDUCE
    return proto() + as_dict(ema=record) + STOP


# --- the pickle attacks -----------------------------------------------------------------------------------


def dtype_itemsize_after_use():
    """Array of dtype S8, then BUILD on that same (memoized) dtype: item size 65536 (reads the heap)."""
    array = array_op(dtype_op("S8", 8), (1,), b"ABCDEFGH")
    grow = get(1) + tup(num(3), text("|"), NONE, NONE, NONE, num(1 << 16), num(1), num(0)) + BUILD
    return refs_pickle(array, grow)


def dtype_byteorder_after_use():
    """A float64 array, then BUILD on its (memoized) dtype flipping the byte order: its values would change."""
    array = array_op(dtype_op("f8", -1, "<"), (1,), bytes(8))
    flip = get(1) + tup(num(3), text(">"), NONE, NONE, NONE, num(-1), num(-1), num(0)) + BUILD
    return refs_pickle(array, flip)


def dtype_reobtained_by_reduce():
    """numpy.dtype(d) returns d itself: the BUILD that follows changes the live array's dtype."""
    array = array_op(dtype_op("S8", 8), (1,), b"ABCDEFGH")
    state = tup(num(3), text("|"), NONE, NONE, NONE, num(1 << 16), num(1), num(0))
    again = glob("numpy", "dtype") + tup(get(1), FALSE, TRUE) + REDUCE + state + BUILD
    return refs_pickle(array, again)


def dtype_fixed_itemsize_changed():
    """A float64 dtype whose state claims 4096-byte items."""
    return refs_pickle(array_op(dtype_op("f8", 4096, "<"), (1,), bytes(8)), num(0))


def object_array():
    return pickle.dumps({"fid": {"mu": np.array([None, 1], dtype=object), "sigma": 0}}, protocol=3)


def huge_reconstruct_shape():
    """_reconstruct(ndarray, (2^40,), b'b') allocates its shape in numpy; the state then lies about it."""
    head = glob("numpy._core.multiarray", "_reconstruct")
    head += tup(glob("numpy", "ndarray"), tup(b"\x8a\x06" + TIB_ELEMENTS.to_bytes(6, "little")), raw(b"b"))
    state = tup(num(1), tup(b"\x8a\x06" + TIB_ELEMENTS.to_bytes(6, "little")), dtype_op("u1"), FALSE, raw(bytes(8)))
    return refs_pickle(head + REDUCE + state + BUILD, num(0))


def ndarray_called():
    """numpy.ndarray((2^40,)) through REDUCE: an 8 TiB array if numpy.ndarray were callable."""
    big = tup(b"\x8a\x06" + TIB_ELEMENTS.to_bytes(6, "little"))
    return refs_pickle(glob("numpy", "ndarray") + tup(big) + REDUCE, num(0))


def bytearray_of_a_size():
    return refs_pickle(
        glob("builtins", "bytearray") + tup(b"\x8a\x06" + TIB_ELEMENTS.to_bytes(6, "little")) + REDUCE, num(0)
    )


def list_dag(levels=100):
    """l0 = []; l(k+1) = [lk, lk]: 100 levels, under 2 KB, a tree of 2^100 lists for any walker."""
    ops = b"]" + put(0) + b"0"
    for k in range(1, levels + 1):
        ops += b"](" + get(k - 1) + get(k - 1) + b"e" + put(k) + (b"0" if k < levels else b"")
    return kwargs_pickle(ops)


def tuple_dag_key(levels=100):
    """The same with tuples, used as a dict key: hashing walks all 2^100 leaves inside the unpickler."""
    ops = b")" + put(0) + b"0"
    for k in range(1, levels + 1):
        ops += get(k - 1) + get(k - 1) + b"\x86" + put(k) + (b"0" if k < levels else b"")
    return proto() + b"}" + ops + num(1) + b"s" + STOP


def hash_flood(keys=100_000):
    """A dict of 100,000 integer keys k * (2^61 - 1), which all hash alike: quadratic inserts (minutes)."""
    items = b"".join(b"\x8a\x0a" + (k * (2**61 - 1)).to_bytes(10, "little") + b"K\x00" for k in range(1, keys + 1))
    return proto() + b"}(" + items + b"u" + STOP


def recursive_list():
    return kwargs_pickle(b"]" + put(0) + get(0) + b"a")


def deep_nesting(depth=100_000):
    return kwargs_pickle(b"]" * depth + b"a" * (depth - 1))


def bytes8_claim():
    return proto(4) + b"\x8e" + struct.pack("<Q", TIB_ELEMENTS) + b"abc" + STOP


def frame_claim():
    return proto(4) + b"\x95" + struct.pack("<Q", TIB_ELEMENTS) + b"N" + STOP


def memo_index_claim():
    return proto() + b"N" + put(0xFFFFFFF0) + STOP


def _legacy_storage_blob(numel, payload, dtype_name="HalfStorage"):
    """torch's legacy storage format (what Storage.__reduce__ writes) with a chosen element count."""
    out = io.BytesIO()
    pickle.dump(0x1950A86A20F9469CFC6C, out, protocol=2)
    pickle.dump(1001, out, protocol=2)
    pickle.dump({"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2}}, out, protocol=2)
    out.write(proto(2) + tup(text("storage"), glob("torch", dtype_name), text("k"), text("cpu"), _long(numel), NONE))
    out.write(b"Q" + STOP)
    pickle.dump(["k"], out, protocol=2)
    out.write(struct.pack("<q", numel) + payload)
    return out.getvalue()


def _long(n):
    data = n.to_bytes(8, "little", signed=True)
    return b"\x8a\x08" + data


def _tensor_ops(blob, offset, size, stride):
    storage = glob("torch.storage", "_load_from_bytes") + tup(raw(blob)) + REDUCE
    args = tup(storage, num(offset), tup(*(_long(n) for n in size)), tup(*(num(s) for s in stride)), FALSE)
    return glob("torch._utils", "_rebuild_tensor_v2") + args + REDUCE


def zero_stride_tensor():
    """One fp16 element shown as a 32768 x 32768 tensor (stride 0): 4 GiB once converted to float32."""
    tensor = _tensor_ops(_legacy_storage_blob(1, bytes(2)), 0, (1 << 15, 1 << 15), (0, 0))
    state = as_dict(_parameters=as_dict(weight=tensor), _init_kwargs=b"}", _init_args=b")")
    meta = as_dict(type=text("class"), version=num(6), module_src=text(""), class_name=text("EDMPrecond"), state=state)
    record = glob("torch_utils.persistence", "_reconstruct_persistent_obj") + tup(meta) + REDUCE
    return proto() + as_dict(ema=record) + STOP


def storage_count_claim():
    """An embedded storage that claims 2^40 elements and holds two bytes."""
    return kwargs_pickle(_tensor_ops(_legacy_storage_blob(TIB_ELEMENTS, bytes(2)), 0, (1,), (1,)))


PICKLE_ATTACKS = {
    # name: (builder, what the refusal must say)
    "dtype-itemsize-after-use": (dtype_itemsize_after_use, "changes the item size of .S8 to 65536"),
    "dtype-byteorder-after-use": (dtype_byteorder_after_use, "after its first use"),
    "dtype-reobtained-by-reduce": (dtype_reobtained_by_reduce, "numpy.dtype of a pickled dtype"),
    "dtype-fixed-itemsize": (dtype_fixed_itemsize_changed, "changes the item size"),
    "object-array": (object_array, "object arrays are refused|not a plain numeric"),
    "huge-reconstruct-shape": (huge_reconstruct_shape, "needs 1099511627776 bytes"),
    "ndarray-called": (ndarray_called, "not callable"),
    "bytearray-of-a-size": (bytearray_of_a_size, "bytearray is accepted only with bytes"),
    "list-dag": (list_dag, "shared references expand"),
    "tuple-dag-dict-key": (tuple_dag_key, "shared references expand"),
    "hash-flood": (hash_flood, "share one hash value"),
    "recursive-list": (recursive_list, "recursive structure"),
    "deep-nesting": (deep_nesting, "nest deeper"),
    "bytes8-claim": (bytes8_claim, "expected 1099511627776 bytes"),
    "frame-claim": (frame_claim, "frame declares"),
    "memo-index": (memo_index_claim, "memo index"),
    "zero-stride-tensor": (zero_stride_tensor, "shows 1073741824 elements"),
    "storage-count-claim": (storage_count_claim, "records 1099511627776"),
}

# attacks written in EDM2's reference-statistics layout: the reference loader reads them too
REFS_LAYOUT = {
    "dtype-itemsize-after-use",
    "dtype-byteorder-after-use",
    "dtype-reobtained-by-reduce",
    "dtype-fixed-itemsize",
    "object-array",
    "huge-reconstruct-shape",
    "ndarray-called",
    "bytearray-of-a-size",
    "tuple-dag-dict-key",
    "hash-flood",
    "bytes8-claim",
    "frame-claim",
    "memo-index",
}


# --- zip archives: torch.save files and .npz ------------------------------------------------------------


def zeros_deflated(prefix: bytes, zeros: int) -> tuple[bytes, int]:
    """(raw deflate stream, crc32) of prefix + `zeros` zero bytes, made in well under a second: full flushes
    make every 16 MiB block of zeros compress to the same bytes, so one block is compressed and repeated."""
    block = 1 << 24
    assert zeros % block == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    piece = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(prefix)
    zero_block = bytes(block)
    for _ in range(zeros // block):
        crc = zlib.crc32(zero_block, crc)
    return head + piece * (zeros // block) + c.flush(), crc


def write_zip(path: Path, members: list[tuple[str, bytes, int, int, bool]]) -> Path:
    """members: (name, data as stored, uncompressed size, crc32, deflated?); a plain zip without extras."""
    out, central = io.BytesIO(), b""
    for name, data, size, crc, deflated in members:
        method, offset, encoded = (8 if deflated else 0), out.tell(), name.encode()
        fields = struct.pack("<HHHHHIIIHH", 20, 0, method, 0, 0x21, crc, len(data), size, len(encoded), 0)
        out.write(b"PK\x03\x04" + fields + encoded + data)
        central += b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HHHII", 0, 0, 0, 0, offset)
        central += encoded
    start = out.tell()
    out.write(
        central + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, len(members), len(members), len(central), start, 0)
    )
    path.write_bytes(out.getvalue())
    return path


def stored(name, data):
    return (name, data, len(data), zlib.crc32(data), False)


class _Storage:
    def __init__(self, key, numel, kind="FloatStorage"):
        self.key, self.numel, self.kind = key, numel, kind


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, OrderedDict())


class _TorchPickler(pickle.Pickler):
    """Writes data.pkl as torch.save does, with storages and tensors we describe (any size, any stride)."""

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", getattr(torch, obj.kind), obj.key, "cpu", obj.numel)
        return None

    def reducer_override(self, obj):
        if isinstance(obj, _Tensor):
            return (torch._utils._rebuild_tensor_v2, obj.args)
        return NotImplemented


def torch_archive(path: Path, record, storages: list[tuple[str, bytes, int, int, bool]]) -> Path:
    buffer = io.BytesIO()
    _TorchPickler(buffer, protocol=2).dump(record)
    members = [stored("archive/data.pkl", buffer.getvalue()), stored("archive/byteorder", b"little")]
    return write_zip(path, members + storages + [stored("archive/version", b"3\n")])


def net_record(weight):
    return {
        "format": "eldistill-net-v1",
        "config": {"class_name": "EDMPrecond"},
        "state_dict": {"w": weight},
        "meta": {},
    }


def pt_deflate_bomb(path: Path) -> Path:
    """A 1 GiB float32 storage deflated to ~1 MB (torch.save never compresses)."""
    data, crc = zeros_deflated(b"", GIB)
    weight = _Tensor(_Storage("0", GIB // 4), 0, (GIB // 4,), (1,))
    return torch_archive(path, net_record(weight), [("archive/data/0", data, GIB, crc, True)])


def pt_storage_claim(path: Path) -> Path:
    weight = _Tensor(_Storage("0", TIB_ELEMENTS), 0, (4,), (1,))
    return torch_archive(path, net_record(weight), [stored("archive/data/0", bytes(16))])


def pt_zero_stride(path: Path) -> Path:
    weight = _Tensor(_Storage("0", 1), 0, (1 << 15, 1 << 15), (0, 0))
    return torch_archive(path, net_record(weight), [stored("archive/data/0", bytes(4))])


def pt_list_dag(path: Path) -> Path:
    buffer = io.BytesIO()
    levels = [[]]
    for _ in range(100):
        levels.append([levels[-1], levels[-1]])
    pickle.dump({**net_record(None), "meta": {"dag": levels[-1]}}, buffer, protocol=2)
    return write_zip(path, [stored("archive/data.pkl", buffer.getvalue()), stored("archive/version", b"3\n")])


def pt_legacy_count_claim(path: Path) -> Path:
    """A file in torch's legacy format (torch < 1.6) whose storage claims 2^40 elements and holds two bytes."""
    path.write_bytes(_legacy_storage_blob(TIB_ELEMENTS, bytes(2)))
    return path


PT_ATTACKS = {
    "pt-deflate-bomb": (pt_deflate_bomb, "is compressed"),
    "pt-storage-claim": (pt_storage_claim, "records 1099511627776"),
    "pt-zero-stride": (pt_zero_stride, "shows 1073741824 elements"),
    "pt-list-dag": (pt_list_dag, "shared references expand"),
    "pt-legacy-count-claim": (pt_legacy_count_claim, "records 1099511627776"),
}


def npy_header(shape, descr="<f8") -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple(shape)}, }}"
    header += " " * (63 - (len(header) + 10) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()


def npz_header_claim(path: Path) -> Path:
    sigma = npy_header((TIB_ELEMENTS,)) + bytes(16)
    return write_zip(path, [stored("mu.npy", npy_header((2,)) + bytes(16)), stored("sigma.npy", sigma)])


def npz_deflate_bomb(path: Path) -> Path:
    header = npy_header((GIB // 8,))
    data, crc = zeros_deflated(header, GIB)
    return write_zip(
        path, [stored("mu.npy", npy_header((2,)) + bytes(16)), ("sigma.npy", data, len(header) + GIB, crc, True)]
    )


def latent_header_claim(path: Path) -> Path:
    """An EDM2 latent dataset whose one record's .npy header claims 8 x 8 x 2^35 float32 (8 TiB)."""
    record = npy_header((8, 8, 1 << 35), "<f4") + bytes(64)
    return write_zip(path, [stored("00000/img-mean-std-00000000.npy", record)])


NPZ_ATTACKS = {
    "npz-header-claim": (npz_header_claim, "header claims"),
    "npz-deflate-bomb": (npz_deflate_bomb, "inflate to"),
}
LATENT_ATTACKS = {"latent-header-claim": (latent_header_claim, "header claims")}
