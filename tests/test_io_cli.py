"""Atomic writes, JSON lines, the CLI dispatcher and the one-step generator helpers."""

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
