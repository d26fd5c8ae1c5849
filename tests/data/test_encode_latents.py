"""`eldistill prepare-dataset --vae`: images -> EDM2's latent dataset, with a tiny random diffusers VAE standing
in for sd-vae-ft-mse. Each record is checked against the same VAE called directly on pixels / 255."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from eldistill.cli import main as cli_main
from eldistill.data import LatentDataset
from eldistill.data.prepare import PrepareError, center_crop_dhariwal, prepare_dataset


def _image_zip(path, n=5, res=32, labels=True):
    rng = np.random.default_rng(0)
    images, entries = [], []
    with zipfile.ZipFile(path, "w") as z:
        for i in range(n):
            img = rng.integers(0, 256, (res, res, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(img).save(buffer, format="png")
            name = f"00000/img{i:08d}.png"
            z.writestr(name, buffer.getvalue())
            images.append(img)
            entries.append([name, i % 2])
        z.writestr("dataset.json", json.dumps({"labels": entries if labels else None}))
    return path, np.stack(images)


def test_encode_writes_edm2_records(latent, tmp_path):
    import diffusers  # in the test extra: never skipped

    vae_dir = latent.tiny_vae(tmp_path / "vae")
    src, images = _image_zip(tmp_path / "img32.zip")
    out = prepare_dataset("image-zip", src, tmp_path / "img32-sd.zip", vae=vae_dir, vae_batch=2)
    with zipfile.ZipFile(out) as z:
        names = sorted(z.namelist())
        meta = json.loads(z.read("dataset.json"))
        records = [np.load(io.BytesIO(z.read(f"00000/img-mean-std-0000000{i}.npy"))) for i in range(5)]
    assert names == [f"00000/img-mean-std-0000000{i}.npy" for i in range(5)] + ["dataset.json"]
    assert meta["labels"] == [[f"00000/img-mean-std-0000000{i}.npy", i % 2] for i in range(5)]
    vae = diffusers.AutoencoderKL.from_pretrained(str(vae_dir)).eval()
    with torch.no_grad():
        dist = vae.encode(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).latent_dist
    for i, record in enumerate(records):
        assert record.dtype == np.float32 and record.shape == (8, 4, 4)
        np.testing.assert_allclose(record[:4], dist.mean[i].numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(record[4:], dist.std[i].numpy(), rtol=1e-4, atol=1e-5)
    ds = LatentDataset(out)
    assert (len(ds), ds.channels, ds.resolution, ds.label_dim) == (5, 4, 4, 2)


def test_cli_and_errors(latent, tmp_path):
    vae_dir = latent.tiny_vae(tmp_path / "vae")
    src, _ = _image_zip(tmp_path / "img.zip", n=3, labels=False)
    out = tmp_path / "lat.zip"
    code = cli_main(["prepare-dataset", "--source", "image-zip", "--input", str(src), "--out", str(out),
                     "--vae", str(vae_dir), "--max-images", "2"])  # fmt: skip
    assert code == 0 and len(LatentDataset(out)) == 2 and LatentDataset(out).label_dim == 0
    with pytest.raises(PrepareError, match="no-vae"):
        prepare_dataset("image-zip", src, tmp_path / "x.zip", vae=tmp_path / "no-vae")
    assert not (tmp_path / "x.zip").exists()


def test_center_crop_dhariwal_by_hand():
    """A 40x100 image to 10: box-halve while the short side is >= 20 (40 -> 20 -> 10), so 10x25, a bicubic
    resize to the same size, then the central 10x10 (columns 7..16)."""
    img = np.zeros((40, 100, 3), np.uint8)
    img[:, 45:55] = 255  # a bright central band
    out = center_crop_dhariwal(img, 10)
    assert out.shape == (10, 10, 3)
    step = Image.fromarray(img).resize((50, 20), Image.Resampling.BOX).resize((25, 10), Image.Resampling.BOX)
    step = np.array(step.resize((25, 10), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(out, step[:, 7:17])
