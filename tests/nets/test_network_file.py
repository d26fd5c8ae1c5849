"""Our `.pt` network file: round trip, weights_only loading, truncated and foreign files."""

from __future__ import annotations

import pytest
import torch

from eldistill.checkpoints import FORMAT, load_network, save_network
from eldistill.nets import build_network, preset


def test_round_trip_same_outputs(tmp_path, randomize):
    net = randomize(build_network(preset("mini", label_dim=10, img_channels=3)), seed=3).eval()
    path = save_network(tmp_path / "teacher.pt", net, {"kind": "teacher", "images": 12})
    raw = torch.load(path, weights_only=True)  # the contract: plain tensors and containers only
    assert raw["format"] == FORMAT and raw["config"] == net.config and raw["meta"]["kind"] == "teacher"
    loaded, meta = load_network(path)
    assert meta == {"kind": "teacher", "images": 12}
    x = torch.randn(4, 3, 16, 16)
    labels = torch.eye(10)[[0, 3, 5, 9]]
    sigma = torch.tensor([0.01, 0.3, 2.0, 40.0])
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x, sigma, labels), net(x, sigma, labels), rtol=0, atol=0)
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temporary file


def test_meta_must_be_plain_data(tmp_path):
    import numpy as np

    with pytest.raises(ValueError, match="meta"):
        save_network(tmp_path / "net.pt", build_network(preset("mini")), {"sigma_init": np.float32(2.5)})
    assert not (tmp_path / "net.pt").exists()


def test_truncated_file_names_path(tmp_path, randomize):
    path = save_network(tmp_path / "net.pt", build_network(preset("mini")))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="net.pt"):
        load_network(path)


def test_foreign_files_refused(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="foreign.pt.*format"):
        load_network(foreign)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="notes.pt"):
        load_network(text)
    with pytest.raises(ValueError, match="missing.pt"):
        load_network(tmp_path / "missing.pt")


def test_mismatched_weights_refused(tmp_path):
    net = build_network(preset("mini"))
    path = save_network(tmp_path / "net.pt", net)
    record = torch.load(path, weights_only=True)
    record["config"]["model_channels"] = 32  # config no longer matches the stored weights
    torch.save(record, path)
    with pytest.raises(ValueError, match="net.pt"):
        load_network(path)


def test_build_network_rejects_bad_config():
    with pytest.raises(ValueError, match="class_name"):
        build_network({"img_resolution": 16, "img_channels": 1})
    with pytest.raises(ValueError, match="NoSuchPrecond"):
        build_network(preset("mini", class_name="NoSuchPrecond"))
    with pytest.raises(ValueError, match="model_type"):
        build_network(preset("mini", model_type="Transformer"))
    with pytest.raises(ValueError, match="not_a_kwarg"):
        build_network(preset("mini", not_a_kwarg=1))
    with pytest.raises(ValueError, match="preset"):
        preset("huge")
