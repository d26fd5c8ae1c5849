"""EDM2's latent dataset (ImageNet 512 as Stable Diffusion VAE latents), read in the layout that EDM2's
`dataset_tool.py encode` writes (edm2 dataset_tool.py:398-412, training/dataset.py:226-228):

- a zip or folder of `NNNNN/img-mean-std-NNNNNNNN.npy` records, each a float32 array (2C, h, w): the VAE
  posterior's mean (first C channels) and std (last C), i.e. 8x64x64 for 512x512 images;
- `dataset.json` with `{"labels": [[name, int], ...]}` (or null), as for image datasets.

A record is not a training image: every draw samples the posterior, mean + std * noise, then applies EDM2's
scale and bias (edm2 training/encoders.py:118-123), so the real batch of EL and of SiDA's discriminator is
in the teacher's latent space and a fresh posterior sample is drawn each time (as EDM2 and SiDA do).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from eldistill.data.dataset import DatasetError, ImageDataset
from eldistill.nets.latent import edm2_scale_bias, posterior_sample
from eldistill.untrusted.arrays import read_npy

LATENT_EXTENSIONS = (".npy",)


def record_name(index: int) -> str:
    """EDM2's archive name of record `index` (dataset_tool.py:403-404)."""
    idx = f"{index:08d}"
    return f"{idx[:5]}/img-mean-std-{idx}.npy"


class LatentDataset(ImageDataset):
    """`ds[i] -> (float32 tensor (2C, h, w): posterior mean and std, int label)`; `channels` is C (the
    teacher's latent channels, 4) and `resolution` h. `scale`/`bias` default to EDM2's; pass those of the
    teacher's recorded encoder (a converted EDM2 pickle's meta["encoder"]) to match it exactly."""

    EXTENSIONS = LATENT_EXTENSIONS
    ITEM_DTYPE = torch.float32
    KIND = "latent (.npy)"

    def __init__(self, path: str | Path, preload: bool = False, scale=None, bias=None):
        default_scale, default_bias = edm2_scale_bias()
        self.scale = default_scale if scale is None else torch.as_tensor(scale, dtype=torch.float32).flatten()
        self.bias = default_bias if bias is None else torch.as_tensor(bias, dtype=torch.float32).flatten()
        super().__init__(path, preload=preload)

    def _set_shape(self, first: torch.Tensor) -> None:
        raw = first.shape[0]
        if raw % 2:
            raise DatasetError(f"{self._where(0)}: {raw} channels; EDM2 latent records hold mean and std (2C channels)")
        self.channels = raw // 2
        if self.scale.numel() != self.channels or self.bias.numel() != self.channels:
            raise DatasetError(
                f"{self.path}: latents have {self.channels} channels but the latent scale/bias have "
                f"{self.scale.numel()}/{self.bias.numel()}"
            )

    def _item_shape(self) -> tuple[int, int, int]:
        return (2 * self.channels, self.resolution, self.resolution)

    @property
    def noise_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.resolution, self.resolution)

    def _decode(self, index: int) -> torch.Tensor:
        data = self._read_bytes(self._names[index])
        try:
            array = read_npy(io.BytesIO(data), len(data), self._where(index))  # header checked against the size
        except (ValueError, OSError, EOFError) as e:
            raise DatasetError(f"{self._where(index)}: not a readable .npy array ({e})") from None
        if array.ndim < 2 or not np.issubdtype(array.dtype, np.floating):
            raise DatasetError(
                f"{self._where(index)}: expected a float array (2C, h, w), got {array.dtype} {array.shape}"
            )
        array = array.reshape(-1, *array.shape[-2:])  # as EDM2's reader: leading axes fold into channels
        return torch.from_numpy(array.astype(np.float32, copy=False).copy())

    def to_model(self, records: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Raw records (B, 2C, h, w) -> final latents: one posterior sample, then EDM2's scale and bias."""
        if noise is None:
            raise ValueError(f"{self.path}: latent records need noise of shape (B, *{self.noise_shape})")
        return posterior_sample(records, noise, self.scale, self.bias)


def is_latent_dataset(path: str | Path) -> bool:
    """True when the zip/folder holds EDM2 latent records (.npy) rather than images."""
    import zipfile

    path = Path(path)
    try:
        if path.is_dir():
            return any(p.suffix.lower() in LATENT_EXTENSIONS for p in path.rglob("*.npy"))
        with zipfile.ZipFile(path) as z:
            return any(n.lower().endswith(LATENT_EXTENSIONS) for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False  # ImageDataset reports the unreadable file with its own message


def open_dataset(path: str | Path, preload: bool = False, encoder: dict | None = None) -> ImageDataset:
    """The reader for what `path` holds: EDM2 latents (LatentDataset) or images (ImageDataset). `encoder` is
    a teacher's recorded latent encoder ({"scale", "bias"}), used for latent datasets."""
    if is_latent_dataset(path):
        encoder = encoder or {}
        return LatentDataset(path, preload=preload, scale=encoder.get("scale"), bias=encoder.get("bias"))
    return ImageDataset(path, preload=preload)
