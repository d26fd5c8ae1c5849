"""Atomic writes, JSON lines, the CLI dispatcher and the one-step generator helpers."""

import os
import stat
import subprocess
import sys

import pytest
import torch

from eldistill import cli, io
from eldistill.generator import one_step, to_uint8


def test_atomic_save_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "state.pt"
    io.atomic_torch_save({"a": torch.ones(2)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        io.atomic_torch_save({"b": Boom()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temp file left behind


def test_jsonl_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    io.append_jsonl({"step": 1}, path)
    with open(path, "a") as f:
        f.write('{"step": 2, "lo')  # killed mid-append
    assert io.read_jsonl(path) == [{"step": 1}]


def test_cli_lists_every_verb_and_rejects_unknown():
    out = subprocess.run([sys.executable, "-m", "eldistill.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for verb in cli.VERBS:
        assert verb in out.stdout
    bad = subprocess.run([sys.executable, "-m", "eldistill.cli", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_every_verb_module_has_the_interface():
    import importlib

    for verb, (module, _) in cli.VERBS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            pytest.fail(f"verb {verb}: module {module} cannot be imported ({e})")
        assert callable(mod.add_arguments) and callable(mod.run), verb


def test_one_step_and_quantisation():
    calls = {}

    def net(x, sigma, labels):
        calls["sigma"] = sigma
        return x / 2.5

    z = torch.randn(3, 1, 4, 4)
    assert torch.allclose(one_step(net, z, 2.5), z)
    assert calls["sigma"].shape == (3,) and float(calls["sigma"][0]) == 2.5
    x = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0, 2.0])
    # EDM: round-to-nearest of x*127.5+127.5, clipped to [0, 255]
    assert to_uint8(x).tolist() == [0, 0, 128, 191, 255, 255]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_files_are_created_with_the_umask(tmp_path, umask, mode):
    """mkstemp makes 0600 files and the mode survives the rename: a group could not read the results."""
    old = os.umask(umask)
    try:
        paths = [
            io.atomic_write_json({"a": 1}, tmp_path / "config.json"),
            io.atomic_write_bytes(b"x", tmp_path / "diff.csv"),
            io.atomic_torch_save({"a": torch.ones(2)}, tmp_path / "state.pt"),
            io.atomic_write_bytes(b"y", tmp_path / "diff.csv"),  # replacing an existing file too
        ]
    finally:
        os.umask(old)
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


DISK_FULL = """
import resource, signal, sys, torch
from eldistill import io
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, like a full disk
path = sys.argv[1]
io.atomic_torch_save({"a": torch.ones(4)}, path)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
try:
    io.atomic_torch_save({"a": torch.zeros(100000)}, path)
except io.DiskFullError as e:
    print(e)
    sys.exit(7)
"""


def test_disk_full_names_the_file_and_the_free_space(tmp_path):
    path = tmp_path / "training-state.pt"
    out = subprocess.run([sys.executable, "-c", DISK_FULL, str(path)], capture_output=True, text=True)
    assert out.returncode == 7, out.stderr  # not torch's "enforce fail at inline_container.cc"
    assert f"{path}: cannot write it: File too large (" in out.stdout and "MiB free on" in out.stdout
    assert "the previous file is unchanged" in out.stdout
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(4))  # still loadable
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_orphaned_temporary_files_are_removed_by_name(tmp_path):
    keep = [tmp_path / "state.pt", tmp_path / ".other.json.abc.tmp", tmp_path / ".hidden"]
    orphans = [tmp_path / ".state.pt.x1y2.tmp", tmp_path / ".metrics.jsonl.zz.tmp"]
    for p in keep + orphans:
        p.write_bytes(b"")
    removed = io.remove_orphaned_temps(tmp_path, ["state.pt", "metrics.jsonl"])
    assert sorted(removed) == sorted(orphans) and all(p.exists() for p in keep)


def test_a_log_line_that_is_not_an_object_is_named(tmp_path):
    path = tmp_path / "fid.jsonl"
    path.write_text('{"fid": 1.0}\n[1, 2]\n')
    with pytest.raises(ValueError, match="fid.jsonl: line 2 is not a JSON object"):
        io.read_jsonl(path)
