"""A tiny teacher, dataset and cell for the launch tests (one SiD iteration takes well under a second)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eldistill.cell import Cell
from eldistill.checkpoints import save_network
from eldistill.nets import build_network, preset

RES = 8


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> tuple[Path, Path]:
    """(teacher.pt, dataset folder): an 8x8 one-channel SongUNet with random weights and 16 noise images."""
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    net = build_network(preset("mini", img_resolution=RES, img_channels=1, label_dim=0, model_channels=8))
    with torch.no_grad():  # random everywhere: EDM's zero-initialised output layers would make training trivial
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    save_network(root / "teacher.pt", net, meta={"kind": "teacher"})
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (RES, RES), dtype=np.uint8)).save(data / f"img{i:04d}.png")
    return root / "teacher.pt", data


@pytest.fixture
def make_cell(tiny_files, tmp_path):
    """A SiD cell over the tiny files writing under tmp_path/<name>/; keywords override fields."""

    def make(name: str = "run", **overrides) -> Cell:
        teacher, data = tiny_files
        d = {
            "distiller": "sid",
            "teacher": str(teacher),
            "dataset": str(data),
            "batch": 4,
            "total_images": 16,
            "lr": 1e-3,
            "ema_halflife_images": 8,
            "run_dir": str(tmp_path / name / "runs" / "cell"),
            "state_dir": str(tmp_path / name / "state" / "cell"),
        }
        d.update(overrides)
        return Cell.from_dict(d)

    return make
