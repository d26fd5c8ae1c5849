"""The EDM2 latent dataset from images: `eldistill prepare-dataset ... --vae DIR` (EDM2's `dataset_tool.py
encode`, edm2 dataset_tool.py:384-412). A GPU job at ImageNet scale; CPU-testable on a tiny stand-in VAE.

Each image (uint8 RGB, 512x512 for ImageNet) goes through the Stable Diffusion VAE encoder as EDM2 does
(pixels / 255, eldistill.nets.latent.LatentCodec.encode_pixels) and is stored as its posterior's mean and std:
one float32 array (2C, H/8, W/8) per image, `np.save`d under `NNNNN/img-mean-std-NNNNNNNN.npy`, with
`dataset.json` labels, in an uncompressed zip. No posterior sample is stored: readers draw one per use
(eldistill.data.latents.LatentDataset).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from eldistill.data.latents import record_name


def read_image_zip(path: str | Path, max_images: int | None = None):
    """(count, iterator of (HWC uint8 image, label or None)) over an EDM-layout image zip or folder, e.g. the
    `img512.zip` EDM2's `dataset_tool.py convert` writes: the input of the encoder."""
    from eldistill.data.dataset import ImageDataset

    ds = ImageDataset(path)
    count = len(ds) if max_images is None else min(len(ds), max_images)
    labelled = ds.label_dim > 0

    def items():
        for i in range(count):
            image, label = ds[i]
            yield image.permute(1, 2, 0).numpy(), (label if labelled else None)

    return count, items()


def _batches(items: Iterator, size: int):
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _as_rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        return img.repeat(3, axis=2)  # the VAE reads RGB; EDM2's reader converts every image to RGB
    if img.shape[2] == 4:
        return img[:, :, :3]
    return img


def write_latent_zip(
    images: Iterator[tuple[np.ndarray, int | None]],
    count: int,
    out: str | Path,
    vae: str | Path,
    device: str = "cpu",
    batch_size: int = 8,
) -> Path:
    """Encode (image, label) pairs with the VAE folder `vae` and write EDM2's latent zip to `out` (a temporary
    file renamed at the end, so `out` is either absent or complete)."""
    from eldistill.data.prepare import PrepareError, _entry, dataset_zip
    from eldistill.nets.latent import LatentCodec

    out = Path(out)
    try:
        codec = LatentCodec.from_pretrained(vae, batch_size=batch_size).to(device)
    except ValueError as e:
        raise PrepareError(str(e)) from None
    shape = None
    with (
        dataset_zip(out, f"no image to encode; nothing to write to {out}") as (zf, entries),
        tqdm(total=count, desc=f"encoding {out.name}", unit="img") as bar,
    ):
        for batch in _batches(images, batch_size):
            pixels = np.stack([_as_rgb(img) for img, _ in batch])
            if shape is None:
                shape = pixels.shape[1:]
                if shape[0] != shape[1] or shape[0] % 8:
                    raise PrepareError(f"images must be square with a side divisible by 8, got {shape[1]}x{shape[0]}")
            elif pixels.shape[1:] != shape:
                raise PrepareError(f"image {len(entries)}: shape {pixels.shape[1:]} is not the first's {shape}")
            x = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(device)
            raw = codec.encode_pixels(x).to(device="cpu", dtype=torch.float32).numpy()
            for record, (_, label) in zip(raw, batch):
                name = record_name(len(entries))
                buffer = io.BytesIO()
                np.save(buffer, record)
                zf.writestr(_entry(name), buffer.getvalue())
                entries.append([name, label])
            bar.update(len(batch))
    return out
