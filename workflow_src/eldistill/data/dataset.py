"""Image datasets in EDM's layout: a zip archive or a folder of image files (PNG, JPEG, ...), with an
optional `dataset.json` holding `{"labels": [[relative/path.png, int], ...]}` (or `"labels": null`).

Images are decoded lazily, one file at a time, so a large archive costs no memory; `preload=True` decodes
everything up front (and checks every shape at once), which small miniature datasets use for speed.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
# Class indices run from 0 to label_dim - 1 and one-hot vectors (and classifier heads) have label_dim entries,
# so one stray huge index would make every label vector huge. The largest public label sets have ~22 k classes
# (ImageNet-21k); an index beyond this is a damaged or foreign dataset.json.
MAX_CLASSES = 100_000


class DatasetError(ValueError):
    """The dataset on disk is missing or malformed; the message names the file."""


class ImageDataset:
    """`ds[i] -> (uint8 tensor (C, H, W), int label)`; label is 0 when the dataset has no labels.

    Subclasses (the EDM2 latent dataset) store other records: they set EXTENSIONS, ITEM_DTYPE and
    override `_decode`, `_item_shape`, `to_model` and `noise_shape`."""

    EXTENSIONS = IMAGE_EXTENSIONS
    ITEM_DTYPE = torch.uint8
    KIND = "image"

    def __init__(self, path: str | Path, preload: bool = False):
        self.path = Path(path)
        if not self.path.exists():
            raise DatasetError(f"dataset not found: {self.path}")
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None
        if self.path.is_dir():
            self._kind = "dir"
            names = [p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()]
        else:
            self._kind = "zip"
            names = self._open_zip().namelist()
        self._names = sorted(n for n in names if n.lower().endswith(self.EXTENSIONS))
        if not self._names:
            raise DatasetError(f"{self.path}: contains no {self.KIND} files ({', '.join(self.EXTENSIONS)})")
        self._labels = self._read_labels(names)
        self.label_dim = int(self._labels.max()) + 1 if self._labels is not None else 0
        first = self._decode(0)
        self.channels, self.resolution = first.shape[0], first.shape[1]
        if first.shape[1] != first.shape[2]:
            raise DatasetError(f"{self._where(0)}: image is {first.shape[2]}x{first.shape[1]}, expected square")
        self._set_shape(first)
        self._cache: torch.Tensor | None = None
        if preload:
            self._cache = self.load_all()

    def _set_shape(self, first: torch.Tensor) -> None:
        """Hook for subclasses whose records are not the model's images (latent mean and std)."""

    def _item_shape(self) -> tuple[int, int, int]:
        """The shape of every record `ds[i]` returns."""
        return (self.channels, self.resolution, self.resolution)

    @property
    def noise_shape(self) -> tuple[int, ...] | None:
        """Shape of the per-sample noise `to_model` needs (None: the records are the model's images)."""
        return None

    @property
    def item_bytes(self) -> int:
        """Memory of one record when preloaded."""
        return math.prod(self._item_shape()) * torch.empty((), dtype=self.ITEM_DTYPE).element_size()

    def to_model(self, records: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Records (B, ...) -> float32 images in the teacher's space: uint8 pixels -> [-1, 1]."""
        return records.to(torch.float32) / 127.5 - 1

    # --- file access --------------------------------------------------------------------------------
    def _open_zip(self) -> zipfile.ZipFile:
        # A zip handle must not be shared across fork()ed workers: reopen in each process.
        if self._zip is None or self._zip_pid != os.getpid():
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as e:
                raise DatasetError(f"{self.path}: not a readable zip archive ({e})") from None
            self._zip_pid = os.getpid()
        return self._zip

    def _read_bytes(self, name: str) -> bytes:
        try:
            if self._kind == "zip":
                return self._open_zip().read(name)
            return (self.path / name).read_bytes()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise DatasetError(f"{self.path}:{name}: cannot be read ({e})") from None

    def _where(self, index: int) -> str:
        return f"{self.path}:{self._names[index]}"

    def _read_labels(self, names: list[str]) -> np.ndarray | None:
        if "dataset.json" not in names:
            return None
        try:
            meta = json.loads(self._read_bytes("dataset.json"))
        except json.JSONDecodeError as e:
            raise DatasetError(f"{self.path}:dataset.json: not valid JSON ({e})") from None
        labels = meta.get("labels") if isinstance(meta, dict) else None
        if labels is None:
            return None
        try:
            table = {str(fname).replace("\\", "/"): label for fname, label in labels}
        except (TypeError, ValueError):
            raise DatasetError(f"{self.path}:dataset.json: 'labels' must be a list of [filename, int] pairs") from None
        for fname, label in table.items():
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < MAX_CLASSES:
                raise DatasetError(
                    f"{self.path}:dataset.json: the label of {fname} is {label!r}; a label is a class index, an "
                    f"integer in [0, {MAX_CLASSES})"
                )
        missing = [n for n in self._names if n not in table]
        if missing:
            raise DatasetError(
                f"{self.path}:dataset.json: no label for {missing[0]} ({len(missing)} images unlabelled)"
            )
        return np.array([table[n] for n in self._names], dtype=np.int64)

    def _decode(self, index: int) -> torch.Tensor:
        data = self._read_bytes(self._names[index])
        try:
            with PIL.Image.open(io.BytesIO(data)) as img:
                if img.mode == "P":
                    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                elif img.mode == "1":
                    img = img.convert("L")
                if img.mode not in ("L", "RGB", "RGBA"):
                    raise DatasetError(f"{self._where(index)}: unsupported image mode {img.mode!r}")
                array = np.asarray(img, dtype=np.uint8)
        except (PIL.UnidentifiedImageError, OSError, SyntaxError) as e:
            raise DatasetError(f"{self._where(index)}: not a readable image ({e})") from None
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array.transpose(2, 0, 1).copy())

    # --- public API ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self._cache is not None:
            image = self._cache[index]
        else:
            image = self._decode(index)
            expected = self._item_shape()
            if tuple(image.shape) != expected:
                raise DatasetError(
                    f"{self._where(index)}: shape {tuple(image.shape)} differs from the dataset's {expected} "
                    f"(set by {self._names[0]}); all images must share one shape"
                )
        label = int(self._labels[index]) if self._labels is not None else 0
        return image, label

    @property
    def names(self) -> list[str]:
        return list(self._names)

    @property
    def labels(self) -> torch.Tensor | None:
        """Integer class labels (N,), or None for an unlabelled dataset."""
        return None if self._labels is None else torch.from_numpy(self._labels.copy())

    def load_all(self) -> torch.Tensor:
        """Every image as one uint8 tensor (N, C, H, W); raises on the first image of another shape."""
        if self._cache is not None:
            return self._cache
        from tqdm import tqdm

        out = torch.empty((len(self), *self._item_shape()), dtype=self.ITEM_DTYPE)
        for i in tqdm(range(len(self)), desc=f"reading {self.path.name}", unit="img", leave=False):
            out[i] = self[i][0]
        return out

    def one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(labels, self.label_dim).to(torch.float32)

    def records(self, index: torch.Tensor) -> torch.Tensor:
        """The stored records of rows `index`, stacked (B, ...)."""
        if self._cache is not None:
            return self._cache[index.cpu()]
        return torch.stack([self[int(i)][0] for i in index.cpu()])

    def images(self, index: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Rows `index` as float32 images in the teacher's space; `noise` (B, *noise_shape) when the dataset
        needs it (on the device the result should be on)."""
        if self.noise_shape is not None and noise is None:
            raise ValueError(f"{self.path}: sampling its records needs noise of shape (B, *{self.noise_shape})")
        records = self.records(index)
        return self.to_model(records if noise is None else records.to(noise.device), noise)

    def sample(self, n: int, generator: torch.Generator | None = None):
        """A random real batch (drawn with replacement): (images float32 in the teacher's space, one-hot labels
        or None). For pixel datasets the images are in [-1, 1]."""
        index = torch.randint(len(self), (n,), generator=generator)
        noise = None if self.noise_shape is None else torch.randn((n, *self.noise_shape), generator=generator)
        images = self.images(index, noise)
        if self._labels is None:
            return images, None
        return images, self.one_hot(torch.from_numpy(self._labels[index.numpy()]))

    def __repr__(self) -> str:
        shape = f"{self.channels}x{self.resolution}x{self.resolution}"
        return f"{type(self).__name__}({str(self.path)!r}: {len(self)} images, {shape}, label_dim={self.label_dim})"

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_zip"] = None  # zip handles do not pickle; reopened lazily
        return state
