"""EDM2's latent dataset: records written here exactly as EDM2's `dataset_tool.py encode` lays them out, read
back and sampled as EDM2 does (mean + std * noise, then its scale and bias); a generator trained on it with EL."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eldistill.cell import Cell
from eldistill.checkpoints import load_network
from eldistill.data import DatasetError, ImageDataset, LatentDataset, open_dataset
from eldistill.nets.latent import edm2_scale_bias
from eldistill.train import train


def test_layout_shapes_and_labels(latent, tmp_path):
    mean, std = latent.random_records(6, 8)
    path = latent.write_latent_zip(tmp_path / "img512-sd.zip", mean, std, labels=[0, 1, 2, 0, 1, 2])
    ds = open_dataset(path)
    assert isinstance(ds, LatentDataset)
    assert (len(ds), ds.channels, ds.resolution, ds.label_dim) == (6, 4, 8, 3)
    record, label = ds[4]
    assert record.dtype == torch.float32 and record.shape == (8, 8, 8) and label == 1
    np.testing.assert_array_equal(record.numpy(), np.concatenate([mean[4], std[4]]))
    assert ds.names[0] == "00000/img-mean-std-00000000.npy"
    assert ds.item_bytes == 8 * 8 * 8 * 4


def test_posterior_sample_by_hand(latent, tmp_path):
    """images(index, noise) = (mean + std * noise) * scale + bias, against float64 arithmetic."""
    mean, std = latent.random_records(5, 4, seed=3)
    ds = LatentDataset(latent.write_latent_zip(tmp_path / "l.zip", mean, std))
    index = torch.tensor([3, 0, 3])
    noise = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    out = ds.images(index, noise)
    scale, bias = (t.double().reshape(1, 4, 1, 1) for t in edm2_scale_bias())
    expected = torch.from_numpy(mean[[3, 0, 3]]).double() + torch.from_numpy(std[[3, 0, 3]]).double() * noise.double()
    expected = expected * scale + bias
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="noise"):
        ds.images(index)  # a latent record is not an image: sampling it needs noise


def test_sampled_statistics_match_mean_and_std(latent, tmp_path):
    """Posterior N(m_c, s_c^2) -> final latents N(m_c * scale + bias, (s_c * scale)^2) per channel."""
    mean, std, m, s = latent.raw_stats_records(16, 8)
    ds = LatentDataset(latent.write_latent_zip(tmp_path / "s.zip", mean, std), preload=True)
    x, labels = ds.sample(400, torch.Generator().manual_seed(1))  # 400 x 64 draws per channel
    assert labels is None and x.shape == (400, 4, 8, 8)
    scale, bias = (t.numpy() for t in edm2_scale_bias())
    got_mean = x.double().mean(dim=(0, 2, 3)).numpy()
    got_std = x.double().std(dim=(0, 2, 3)).numpy()
    assert (np.abs(got_mean - (m * scale + bias)) < 4 * s * scale / np.sqrt(400 * 64)).all()  # 4 standard errors
    np.testing.assert_allclose(got_std, s * scale, rtol=0.02)


def test_teacher_encoder_scale_bias_is_used(latent, tmp_path):
    mean, std, m, _ = latent.raw_stats_records(2, 2)
    std[:] = 0  # deterministic: the latent is mean * scale + bias
    path = latent.write_latent_zip(tmp_path / "e.zip", mean, std)
    ds = open_dataset(path, encoder={"scale": [1.0, 2.0, 3.0, 4.0], "bias": [0.0, 1.0, 0.0, -1.0]})
    x, _ = ds.sample(1, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), m * [1, 2, 3, 4] + [0, 1, 0, -1], rtol=1e-6)


def test_folder_layout_and_bad_records(latent, tmp_path):
    import zipfile

    mean, std = latent.random_records(3, 4)
    zpath = latent.write_latent_zip(tmp_path / "z.zip", mean, std, labels=[0, 1, 0])
    folder = tmp_path / "folder"
    zipfile.ZipFile(zpath).extractall(folder)
    ds = open_dataset(folder)
    assert isinstance(ds, LatentDataset) and len(ds) == 3 and ds.label_dim == 2
    np.save(folder / "00000" / "img-mean-std-00000001.npy", np.zeros((8, 4, 4), np.int64))
    with pytest.raises(DatasetError, match="img-mean-std-00000001.npy: expected a float array"):
        LatentDataset(folder)[1]
    odd = tmp_path / "odd"
    (odd / "00000").mkdir(parents=True)
    np.save(odd / "00000" / "img-mean-std-00000000.npy", np.zeros((7, 4, 4), np.float32))
    with pytest.raises(DatasetError, match="7 channels"):
        LatentDataset(odd)
    with pytest.raises(DatasetError, match="not found"):
        open_dataset(tmp_path / "nothing.zip")


def test_pixel_datasets_keep_their_reader(tmp_path):
    from PIL import Image

    folder = tmp_path / "px"
    folder.mkdir()
    Image.fromarray(np.full((4, 4, 3), 255, np.uint8)).save(folder / "a.png")
    ds = open_dataset(folder)
    assert type(ds) is ImageDataset and ds.noise_shape is None
    torch.testing.assert_close(ds.images(torch.tensor([0])), torch.ones(1, 3, 4, 4))


@pytest.mark.parametrize("distiller", ["sida"])
def test_two_el_iterations_on_latents(latent, tmp_path, distiller):
    """SiDA + EL on a 4-channel EDM2 teacher and EDM2 latents: the real batch (EL's and the discriminator's)
    comes from the latent dataset; two iterations run, write a generator and move its weights."""
    mean, std = latent.random_records(12, 8)
    data = latent.write_latent_zip(tmp_path / "img512-sd.zip", mean, std, labels=[i % 3 for i in range(12)])
    teacher = latent.save_tiny_edm2_teacher(tmp_path / "teacher.pt")
    cell = Cell.from_dict(
        {
            "distiller": distiller,
            "teacher": str(teacher),
            "dataset": str(data),
            "batch": 4,
            "total_images": 8,
            "lr": 1e-3,
            "ema_halflife_images": 8,
            "distiller_args": {"generator_freeze_images": 0, "gan_start_images": 0},
            "el": {"weight": 1.0, "archs": ["cnn"], "inits_per_arch": 2, "working_size": 8},
            "run_dir": str(tmp_path / "run"),
            "state_dir": str(tmp_path / "state"),
        }
    )
    last = train(cell, device="cpu")
    assert last["iteration"] == 2 and np.isfinite(last["el"]) and last["el"] != 0
    gen, meta = load_network(tmp_path / "run" / "generator.pt")
    assert gen.img_channels == 4 and meta["encoder"]["scale"] == pytest.approx(edm2_scale_bias()[0].tolist())
    start, _ = load_network(teacher)
    moved = any(not torch.equal(a, b) for a, b in zip(gen.state_dict().values(), start.state_dict().values()))
    assert moved
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss/generator"]) for r in log)


def test_el_on_decoded_pixels(latent, tmp_path):
    """el.space = pixels: EL compares VAE-decoded images (3 channels), with the generator's gradient flowing
    through the decoder; a missing VAE folder is refused before training."""
    mean, std = latent.random_records(8, 8)
    data = latent.write_latent_zip(tmp_path / "l.zip", mean, std, labels=[i % 3 for i in range(8)])
    teacher = latent.save_tiny_edm2_teacher(tmp_path / "teacher.pt")
    vae = latent.tiny_vae(tmp_path / "vae")
    el = {"weight": 1.0, "archs": ["cnn"], "inits_per_arch": 2, "working_size": 16, "space": "pixels"}
    base = {"distiller": "sid", "teacher": str(teacher), "dataset": str(data), "batch": 4, "total_images": 8,
            "lr": 1e-3, "run_dir": str(tmp_path / "run"), "state_dir": str(tmp_path / "state")}  # fmt: skip
    with pytest.raises(ValueError, match="el.vae"):
        Cell.from_dict({**base, "el": el})  # pixels without a VAE
    cell = Cell.from_dict({**base, "el": {**el, "vae": str(tmp_path / "no-vae")}})
    with pytest.raises(ValueError, match="not a diffusers VAE folder"):
        train(cell, device="cpu")
    cell = Cell.from_dict({**base, "el": {**el, "vae": str(vae)}})
    assert cell.cell_id != Cell.from_dict({**base, "el": {**el, "space": "model"}}).cell_id
    last = train(cell, device="cpu")
    assert last["iteration"] == 2 and np.isfinite(last["el"]) and last["el"] != 0
