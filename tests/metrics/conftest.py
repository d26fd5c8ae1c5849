"""Shared fixtures for the metrics tests: the digits miniature, a briefly trained classifier, its reference."""

from __future__ import annotations

import copy

import pytest
import torch

from eldistill.checkpoints import save_network
from eldistill.data.miniature import make_dataset
from eldistill.metrics import MINI
from eldistill.metrics.classifier import train_classifier
from eldistill.metrics.refstats import reference_stats
from eldistill.nets import PRESETS, build_network


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """sklearn digits at 1x16x16, labelled (1797 images)."""
    return make_dataset("digits", tmp_path_factory.mktemp("data") / "digits16.zip", resolution=16, channels=1)


@pytest.fixture(scope="session")
def classifier(digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("cls") / "classifier.pt"
    meta = train_classifier(digits, path, epochs=4, seed=0)
    return path, meta


@pytest.fixture(scope="session")
def mini_reference(digits, classifier, tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "digits16-mini.npz"
    reference_stats(digits, MINI, path, feature_net=classifier[0])
    return path


def make_generator(label_dim: int = 0, seed: int = 0):
    """An untrained miniature network used as a one-step generator (what every distiller starts from)."""
    torch.manual_seed(seed)
    config = copy.deepcopy(PRESETS["mini"])
    config["label_dim"] = label_dim
    return build_network(config)


def save_generator(path, net, images_seen: int, sigma_init: float = 2.5):
    meta = {"kind": "generator", "sigma_init": sigma_init, "images_seen": images_seen, "iterations": images_seen // 64}
    save_network(path, net, {**meta, "cell_id": "test-cell"})
    return path


@pytest.fixture
def helpers():
    return type("Helpers", (), {"make_generator": staticmethod(make_generator), "save_generator": save_generator})


class _FakeLayers(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _FakeDetector(torch.nn.Module):
    """The TorchScript interface of inception-2015-12-05.pt (base(x, return_features=True) -> (B, 2048) and a
    `layers` attribute), without its weights: the real file cannot be downloaded in tests."""

    def __init__(self):
        super().__init__()
        self.layers = _FakeLayers()
        self.proj = torch.nn.Linear(3, 2048)

    def forward(self, x: torch.Tensor, return_features: bool = False, no_output_bias: bool = False) -> torch.Tensor:
        features = self.proj(x.to(torch.float32).mean(dim=(2, 3)) / 255.0)
        if return_features:
            return features
        return torch.softmax(features[:, :1008], dim=1)


@pytest.fixture(scope="session")
def fake_detector(tmp_path_factory):
    path = tmp_path_factory.mktemp("detector") / "inception-2015-12-05.pt"
    torch.manual_seed(0)
    torch.jit.script(_FakeDetector()).save(str(path))
    return path
