"""Tiny teachers, datasets and cells for the distiller and training-loop tests (CPU, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eldistill.cell import Cell
from eldistill.checkpoints import save_network
from eldistill.nets import build_network, preset

RES, CH = 8, 1


def tiny_net(label_dim: int = 0, seed: int = 0) -> torch.nn.Module:
    """An EDM SongUNet small enough that a distiller step takes milliseconds; random but fixed weights."""
    torch.manual_seed(seed)
    config = preset("mini", img_resolution=RES, img_channels=CH, label_dim=label_dim, model_channels=8)
    net = build_network(config)
    # Random weights everywhere (EDM zero-initialises output layers, which would make every loss trivial).
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return net


def write_dataset(folder: Path, n: int = 24, label_dim: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    labels = []
    for i in range(n):
        name = f"img{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (RES, RES), dtype=np.uint8)).save(folder / name)
        labels.append([name, i % label_dim if label_dim else 0])
    if label_dim:
        (folder / "dataset.json").write_text(json.dumps({"labels": labels}))
    return folder


@pytest.fixture
def make_files(tmp_path):
    """(teacher.pt, dataset folder) for an unconditional or conditional tiny teacher."""

    def make(label_dim: int = 0):
        teacher = tmp_path / f"teacher{label_dim}.pt"
        save_network(teacher, tiny_net(label_dim), meta={"kind": "teacher"})
        data = write_dataset(tmp_path / f"data{label_dim}", label_dim=label_dim)
        return teacher, data

    return make


@pytest.fixture
def make_cell(tmp_path, make_files):
    """A cell over the tiny files; keyword arguments override any field ("run" names its folders)."""

    def make(run: str = "run", label_dim: int = 0, **overrides) -> Cell:
        teacher, data = make_files(label_dim)
        d = {
            "distiller": "sid",
            "teacher": str(teacher),
            "dataset": str(data),
            "batch": 4,
            "total_images": 8,
            "lr": 1e-3,
            "ema_halflife_images": 8,
            "run_dir": str(tmp_path / run / "run"),
            "state_dir": str(tmp_path / run / "state"),
        }
        d.update(overrides)
        return Cell.from_dict(d)

    return make


TINY_EL = {"weight": 1.0, "archs": ["cnn"], "inits_per_arch": 2, "working_size": 8}


@pytest.fixture
def tiny_el() -> dict:
    """A two-embedder EL config small enough for 8x8 images."""
    return dict(TINY_EL)


@pytest.fixture
def net_factory():
    return tiny_net
