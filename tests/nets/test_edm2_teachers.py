"""EDM2 teachers: a post-hoc EMA reconstruction converts through the safe loader with its EMA choice and latent
encoder recorded, and that record reaches the data reader; the paper config's teachers say the same."""

from __future__ import annotations

import pytest
import yaml

from eldistill.checkpoints import convert_teacher, load_network, posthoc_ema_of
from eldistill.grid import REPO


def test_convert_records_posthoc_ema_and_encoder(write_edm_pickle, latent, tmp_path):
    net = latent.tiny_edm2(label_dim=3)
    src = write_edm_pickle(tmp_path / "edm2-img512-xs-2147483-0.135.pkl", net, edm2=True)
    out = convert_teacher(src, tmp_path / "teacher.pt")
    loaded, meta = load_network(out)
    assert meta["posthoc_ema"] == {"kimg": 2147483, "std": 0.135}
    assert meta["encoder"]["scale"] == pytest.approx([0.12, 0.11, 0.13, 0.15], rel=1e-6)  # the pickle's own
    assert loaded.config["class_name"] == "EDM2Precond" and loaded.img_channels == 4
    assert posthoc_ema_of("edm-cifar10-32x32-uncond-vp.pkl") is None


def test_paper_teachers_posthoc_ema_matches_their_files():
    teachers = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())["teachers"]
    edm2 = {name: t for name, t in teachers.items() if name.startswith("edm2-")}
    assert len(edm2) == 6  # XS, S, M, L, XL, XXL
    for name, teacher in edm2.items():
        assert teacher["url"].endswith(f"/{name}.pkl")
        assert teacher["posthoc_ema"] == posthoc_ema_of(name), name
