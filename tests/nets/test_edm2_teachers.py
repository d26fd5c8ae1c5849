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


def test_pickle_to_trained_latent_generator_to_decoder(write_edm_pickle, latent, tmp_path):
    """convert-teacher -> train on EDM2 latents -> evaluate's decoder: the pickle's own encoder scale/bias (not
    EDM2's defaults) reach the real batch and the VAE decoding of the generator's latents."""
    from eldistill.cell import Cell
    from eldistill.cli import main as cli_main
    from eldistill.metrics.evaluate import latent_codec
    from eldistill.train import train

    src = write_edm_pickle(tmp_path / "edm2-img512-xs-2147483-0.135.pkl", latent.tiny_edm2(label_dim=3), edm2=True)
    assert cli_main(["convert-teacher", str(src), str(tmp_path / "teacher.pt")]) == 0
    mean, std = latent.random_records(8, 8)
    data = latent.write_latent_zip(tmp_path / "img512-sd.zip", mean, std, labels=[i % 3 for i in range(8)])
    cell = Cell.from_dict(
        {"distiller": "sid", "teacher": str(tmp_path / "teacher.pt"), "dataset": str(data), "batch": 4,
         "total_images": 4, "lr": 1e-3, "distiller_args": {"return_logvar": True, "p_mean": -0.4, "p_std": 1.0},
         "el": {"weight": 1.0, "archs": ["cnn"], "inits_per_arch": 2, "working_size": 8},
         "run_dir": str(tmp_path / "run"), "state_dir": str(tmp_path / "state")}
    )  # fmt: skip
    train(cell, device="cpu")
    gen, meta = load_network(tmp_path / "run" / "generator.pt")
    codec = latent_codec(gen, meta, latent.tiny_vae(tmp_path / "vae"), "cpu")
    assert codec.scale.tolist() == pytest.approx([0.12, 0.11, 0.13, 0.15], rel=1e-6)
    assert codec.bias.tolist() == pytest.approx([-0.7, -0.35, -0.02, 0.33], rel=1e-6)
