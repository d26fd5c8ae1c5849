"""What the guards must still accept: files numpy, pickle and torch.save write, every protocol, every plain dtype.

And one structural check: every torch.load of the suite goes through the one bounded loader."""

from __future__ import annotations

import ast
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from eldistill.checkpoints import read_edm_pickle
from eldistill.metrics.protocols import load_reference
from eldistill.untrusted import UnsafePickleError, load_pickle
from eldistill.untrusted.arrays import PICKLE_GLOBALS as NUMPY_GLOBALS
from eldistill.untrusted.arrays import read_npz
from eldistill.untrusted.torch_files import PICKLE_GLOBALS as TORCH_GLOBALS
from eldistill.untrusted.torch_files import load_torch_file

ROOT = Path(__file__).resolve().parents[2]

ARRAYS = {
    "f8": np.linspace(-1, 1, 7),
    "f4-2d": np.arange(12, dtype=np.float32).reshape(3, 4),
    "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    "big-endian": np.arange(5, dtype=">f8"),
    "f2": np.array([0.5, -2], dtype=np.float16),
    "bool": np.array([True, False, True]),
    "i8": np.array([-(2**40), 3], dtype=np.int64),
    "u1": np.arange(4, dtype=np.uint8),
    "c16": np.array([1 + 2j, -3j]),
    "unicode": np.array(["ab", "cdé"]),
    "bytes": np.array([b"xy", b"z"]),
    "empty": np.zeros((0, 3)),
    "scalar-f8": np.float64(0.7071067811865476),
    "scalar-i8": np.int64(1281167),
}


def _load(data: bytes, allowed=NUMPY_GLOBALS):
    return load_pickle(io.BytesIO(data), "test.pkl", allowed)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_numpy_pickles_with_dtype_builds_load_exactly(protocol):
    """numpy writes a BUILD for every dtype (the published files have them): all plain dtypes load, with the
    dtype and memory order numpy's own unpickling gives (it makes big-endian data native below protocol 5)."""
    data = pickle.dumps(ARRAYS, protocol=protocol)
    assert b"dtype" in data and b"b" in data  # numpy.dtype global, BUILD opcodes
    loaded, reference = _load(data), pickle.loads(data)
    for key, value in ARRAYS.items():
        got, want = loaded[key], reference[key]
        assert type(np.asarray(got)) is np.ndarray and got.dtype == want.dtype, key
        assert got.shape == value.shape and np.array_equal(got, value), key
        assert np.asarray(got).flags.f_contiguous == np.asarray(want).flags.f_contiguous, key


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_reference_pickles_of_every_protocol(tmp_path, protocol):
    """Protocols 0-2 spell bytes as _codecs.encode and builtins as __builtin__; they load like pickle loads them."""
    mu, sigma = np.arange(2048.0), np.eye(2048)
    path = tmp_path / "ref.pkl"
    path.write_bytes(pickle.dumps({"fid": {"mu": mu, "sigma": sigma}, "num_images": np.int64(50000)}, protocol))
    if protocol <= 2:
        assert b"_codecs" in path.read_bytes()
    ref = load_reference(path)
    assert np.array_equal(ref.mu, mu) and np.array_equal(ref.sigma, sigma) and ref.num_images == 50000


def test_protocol_2_builtin_names_map_like_pickle():
    value = {"set": {1, 2}, "frozen": frozenset({3}), "bytes": b"\x00\xff", "empty": b"", "array": bytearray(b"ab")}
    data = pickle.dumps(value, protocol=2)
    assert b"__builtin__" in data and b"_codecs" in data
    assert _load(data, TORCH_GLOBALS) == pickle.loads(data) == value
    with pytest.raises(UnsafePickleError, match="test.pkl: refusing to load global 'builtins.eval'"):
        _load(b"\x80\x02c__builtin__\neval\nX\x01\x00\x00\x001\x85R.")  # mapped, then refused by the allowlist


def test_shared_storage_views_load(tmp_path):
    """Views that share one storage (a slice, a transpose) are legitimate: within their storage, no overlap."""
    base = torch.arange(24.0).reshape(4, 6)
    value = {"t": base.t(), "row": base[1], "tail": base.view(-1)[20:], "half": torch.ones(3, dtype=torch.float16)}
    loaded = read_edm_pickle(_write(tmp_path / "views.pkl", pickle.dumps(value)))
    assert all(torch.equal(loaded[k], v) for k, v in value.items())
    for zip_format in (True, False):
        path = tmp_path / f"views-{zip_format}.pt"
        torch.save(value, path, _use_new_zipfile_serialization=zip_format)
        assert all(torch.equal(load_torch_file(path)[k], v) for k, v in value.items())


def test_our_files_load_through_the_bounded_loader(tmp_path):
    """What our files hold: state dicts, optimizer and RNG state, dtypes, devices, plain metadata."""
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = {"nets": {"g": net.state_dict()}, "opt": opt.state_dict(), "rng": torch.get_rng_state(), "n": 3}
    state["meta"] = {"dtype": torch.float16, "device": torch.device("cpu"), "ids": ("a", "b"), "none": None}
    for zip_format in (True, False):  # torch.save's archive, and the legacy format of files from torch < 1.6
        path = tmp_path / f"state-{zip_format}.pt"
        torch.save(state, path, _use_new_zipfile_serialization=zip_format)
        loaded = load_torch_file(path)
        assert torch.equal(loaded["rng"], state["rng"]) and loaded["meta"] == state["meta"]
        assert loaded["opt"]["param_groups"] == state["opt"]["param_groups"]
        assert torch.equal(loaded["nets"]["g"]["weight"], net.weight.detach())


def test_npz_files_numpy_writes_load(tmp_path):
    arrays = {"mu": np.arange(5.0), "sigma": np.eye(5), "protocol": np.array("mini-classifier"), "n": np.array(7)}
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, **arrays)
        loaded = read_npz(path)
        assert loaded.keys() == arrays.keys()
        assert all(np.array_equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in arrays.items())


def _torch_load_calls(path: Path) -> int:
    calls = [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)]
    return sum(ast.unparse(call.func) in ("torch.load", "torch.serialization.load") for call in calls)


def test_every_torch_load_goes_through_the_bounded_loader():
    """torch.load is called in one place (after the archive checks); everything else calls load_torch_file."""
    files = [*(ROOT / "workflow_src").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    calls = {str(path.relative_to(ROOT)): _torch_load_calls(path) for path in files}
    bounded = {"workflow_src/eldistill/untrusted/torch_files.py": 1}
    baseline = {"benchmarks/untrusted_load.py": 1}  # the plain torch.load it is compared with, on its own file
    assert {k: n for k, n in calls.items() if n} == {**bounded, **baseline}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
