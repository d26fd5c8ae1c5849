"""`eldistill prepare-dataset`: write a paper dataset in EDM's layout from what a site can obtain.

EDM's dataset_tool.py (NVlabs/edm, dataset_tool.py) is the reference; the paper's datasets are prepared as its
README says:
    CIFAR-10  --source=cifar-10-python.tar.gz                     (the public python tarball, 50k train images)
    FFHQ      --source=ffhq/images1024x1024 --resolution=64x64   (plain Lanczos resize)
    AFHQv2    --source=afhqv2 --resolution=64x64                 (plain Lanczos resize)
    ImageNet  --source=ILSVRC/Data/CLS-LOC/train --resolution=64x64 --transform=center-crop

Sources (`--source`):
    cifar10-tarball  the python tarball: data_batch_1..5 of cifar-10-batches-py/, pickled dicts whose `data`
                     is (10000, 3072) uint8 in CHW order and `labels` a list of ints (read without running code)
    image-folder     every image file under a folder, sorted by path; labels from the folder's dataset.json,
                     else from the top-level sub-folder names when there are several (ImageNet's synsets)
    zip              a zip someone prepared already (EDM's dataset_tool.py): checked and linked, not copied
    image-zip        an EDM-layout zip or folder of images (e.g. EDM2's img512.zip), read image by image
Further sources register themselves in SOURCES as "module:function".

With `--vae DIR` the output is EDM2's latent dataset instead of PNGs: every image (after the transform) is
encoded with the Stable Diffusion VAE in DIR (a local copy of stabilityai/sd-vae-ft-mse) as EDM2's
`dataset_tool.py encode` does (eldistill.data.encode_latents). ImageNet 512 as EDM2 prepares it:
    --source=image-folder --input=ILSVRC/Data/CLS-LOC/train --resolution=512 --transform=center-crop-dhariwal
    --vae=sd-vae-ft-mse --device=cuda          (or --source=image-zip --input=img512.zip --vae=...)

The output matches dataset_tool.py's: an uncompressed zip of uncompressed PNGs named `00000/img00000000.png`
(the first five digits of the 8-digit index form the folder) and `dataset.json` holding
`{"labels": [[name, int], ...]}` or `{"labels": null}`. Images must come out square, a power of two, with 1 or
3 channels and all the same shape. Zip entries carry a fixed timestamp, so the same input gives the same bytes.
A missing source fails with a message naming the file or folder and where to put it.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import sys
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import PIL.Image
from tqdm import tqdm

from eldistill.data.dataset import IMAGE_EXTENSIONS
from eldistill.untrusted import load_pickle
from eldistill.untrusted.arrays import PICKLE_GLOBALS as NUMPY_PICKLE_GLOBALS

TRANSFORMS = ("none", "center-crop", "center-crop-wide", "center-crop-dhariwal")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"


class PrepareError(ValueError):
    """A source is missing or malformed; the message names the file and what to do."""


# --- sources: each returns (count, iterator of (HWC or HW uint8 image, label or None)) -------------------------


def _missing(path: Path, what: str) -> PrepareError:
    return PrepareError(f"{what} not found: {path.resolve()}. Put it there (or point the config at it) and rerun")


def read_cifar10_tarball(path: str | Path, max_images: int | None = None):
    """(count, iterator) over CIFAR-10's 50,000 training images (HWC uint8) and labels, in file order."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path, f"CIFAR-10 python tarball (cifar-10-python.tar.gz, from {CIFAR10_URL})")
    images, labels = [], []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for batch in range(1, 6):
                name = f"cifar-10-batches-py/data_batch_{batch}"
                try:
                    member = tar.getmember(name)
                except KeyError:
                    raise PrepareError(f"{path}: no member {name}; is this the CIFAR-10 python tarball?") from None
                with tar.extractfile(member) as f:
                    # EDM reads these with pickle.load(encoding="latin1"); ours (latin-1 too) refuses every global
                    # but numpy's and bounds what the file can make us allocate
                    data = load_pickle(io.BytesIO(f.read()), f"{path} member {name}", NUMPY_PICKLE_GLOBALS)
                images.append(np.asarray(data["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.append(np.asarray(data["labels"], dtype=np.int64))
    except (tarfile.TarError, OSError, EOFError, KeyError, TypeError, ValueError) as e:
        if isinstance(e, PrepareError):
            raise
        raise PrepareError(f"{path}: not a readable CIFAR-10 python tarball ({e})") from None
    x = np.concatenate(images).transpose(0, 2, 3, 1)  # NCHW -> NHWC, as dataset_tool.py does
    y = np.concatenate(labels)
    if len(x) != len(y) or y.min() < 0 or y.max() > 9:
        raise PrepareError(f"{path}: {len(x)} images but {len(y)} labels in 0..9; the tarball looks damaged")
    count = len(x) if max_images is None else min(len(x), max_images)
    return count, ((x[i], int(y[i])) for i in range(count))


def read_image_folder(path: str | Path, max_images: int | None = None):
    """(count, iterator) over the image files under `path` (sorted by relative path) with dataset_tool.py's
    labels: the folder's dataset.json, else the index of the sorted top-level sub-folder names when there is
    more than one, else none."""
    path = Path(path)
    if not path.is_dir():
        raise _missing(path, "image folder")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise PrepareError(f"{path}: holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    names = [p.relative_to(path).as_posix() for p in files]
    labels: dict[str, int] = {}
    meta = path / "dataset.json"
    if meta.is_file():
        try:
            table = json.loads(meta.read_text()).get("labels")
        except (json.JSONDecodeError, AttributeError) as e:
            raise PrepareError(f"{meta}: not valid JSON with a 'labels' entry ({e})") from None
        labels = {str(name): int(label) for name, label in table or []}
    if not labels:
        top = [n.split("/")[0] if "/" in n else "" for n in names]
        index = {t: i for i, t in enumerate(sorted(set(top)))}
        if len(index) > 1:
            labels = {n: index[t] for n, t in zip(names, top)}
    count = len(files) if max_images is None else min(len(files), max_images)

    def images():
        for file, name in zip(files[:count], names[:count]):
            try:
                with PIL.Image.open(file) as img:
                    yield np.array(img), labels.get(name)
            except (PIL.UnidentifiedImageError, OSError) as e:
                raise PrepareError(f"{file}: not a readable image ({e})") from None

    return count, images()


# name -> "module:function" returning (count, iterator); other modules add theirs (the EDM2 latent encoder)
SOURCES: dict[str, str] = {
    "cifar10-tarball": "eldistill.data.prepare:read_cifar10_tarball",
    "image-folder": "eldistill.data.prepare:read_image_folder",
    "image-zip": "eldistill.data.encode_latents:read_image_zip",
}


def _load_source(name: str) -> Callable:
    if name not in SOURCES:
        raise PrepareError(f"source {name!r} is unknown; choose one of {', '.join([*SOURCES, 'zip'])}")
    module, function = SOURCES[name].split(":")
    return getattr(importlib.import_module(module), function)


# --- EDM's crop and resize rules (dataset_tool.py, make_transform) ---------------------------------------------
def _rgb(img: np.ndarray) -> np.ndarray:
    return img[:, :, None].repeat(3, axis=2) if img.ndim == 2 else img


def transform_image(img: np.ndarray, transform: str, resolution: int | None) -> np.ndarray | None:
    """One image through dataset_tool.py's transform: `none` resizes (Lanczos) to resolution x resolution
    unless it is already that size; `center-crop` takes the central square, then resizes; `center-crop-wide`
    crops to the output's aspect and pads to a square (None when the image is too small, which drops it)."""
    if transform == "none":
        if resolution is None or img.shape[:2] == (resolution, resolution):
            return img
        return np.array(PIL.Image.fromarray(img).resize((resolution, resolution), PIL.Image.Resampling.LANCZOS))
    if resolution is None:
        raise PrepareError(f"transform {transform!r} needs --resolution")
    if transform == "center-crop":
        crop = min(img.shape[:2])
        top, left = (img.shape[0] - crop) // 2, (img.shape[1] - crop) // 2
        img = _rgb(img[top : top + crop, left : left + crop])
        return np.array(PIL.Image.fromarray(img, "RGB").resize((resolution, resolution), PIL.Image.Resampling.LANCZOS))
    if transform == "center-crop-wide":  # a square output: width = height = resolution, so no padding band
        ch = int(np.round(resolution * img.shape[0] / img.shape[1]))
        if img.shape[1] < resolution or ch < resolution:
            return None
        img = _rgb(img[(img.shape[0] - ch) // 2 : (img.shape[0] + ch) // 2])
        return np.array(PIL.Image.fromarray(img, "RGB").resize((resolution, resolution), PIL.Image.Resampling.LANCZOS))
    if transform == "center-crop-dhariwal":
        return center_crop_dhariwal(_rgb(img), resolution)
    raise PrepareError(f"transform {transform!r} is unknown; choose one of {', '.join(TRANSFORMS)}")


def center_crop_dhariwal(img: np.ndarray, resolution: int) -> np.ndarray:
    """ADM's ImageNet crop, which EDM2 uses for img512 (edm2 dataset_tool.py:168-186): halve with a box filter
    while the short side is at least twice the target, bicubic-resize the short side to the target, then take
    the central square."""
    image = PIL.Image.fromarray(img)
    while min(image.size) >= 2 * resolution:
        image = image.resize(tuple(x // 2 for x in image.size), resample=PIL.Image.Resampling.BOX)
    scale = resolution / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=PIL.Image.Resampling.BICUBIC)
    arr = np.array(image)
    top, left = (arr.shape[0] - resolution) // 2, (arr.shape[1] - resolution) // 2
    return arr[top : top + resolution, left : left + resolution]


# --- writing -----------------------------------------------------------------------------------------------------
def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # fixed: identical bytes on every run
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


@contextmanager
def dataset_zip(out: Path, empty_message: str) -> Iterator[tuple[zipfile.ZipFile, list[list]]]:
    """Yield (zip, entries) for a dataset zip written to a temporary file beside `out`: the caller writes each
    record and appends [name, label] to entries; on a clean exit dataset.json gets the labels (None if any
    record has none) and the file is renamed to `out`, so `out` is either absent or complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    entries: list[list] = []
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            yield zf, entries
            if not entries:
                raise PrepareError(empty_message)
            labelled = all(label is not None for _, label in entries)
            zf.writestr(_entry("dataset.json"), json.dumps({"labels": entries if labelled else None}))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def write_edm_zip(images: Iterator[tuple[np.ndarray, int | None]], count: int, out: str | Path, desc: str) -> Path:
    """Stream (image, label) pairs into `out` in dataset_tool.py's layout; written to a temporary file in the
    same folder and renamed, so `out` is either absent or complete."""
    out = Path(out)
    attrs = None
    with dataset_zip(out, f"no image survived the transform; nothing to write to {out}") as (zf, entries):
        for img, label in tqdm(images, total=count, desc=desc, unit="img"):
            index = len(entries)
            name = f"{index:08d}"[:5] + f"/img{index:08d}.png"
            shape = (img.shape[1], img.shape[0], img.shape[2] if img.ndim == 3 else 1)
            if attrs is None:
                attrs = shape
                width, height, channels = shape
                if width != height or width & (width - 1):
                    raise PrepareError(f"{name}: images must come out square, a power of two; got {width}x{height}")
                if channels not in (1, 3):
                    raise PrepareError(f"{name}: images must be greyscale or RGB, got {channels} channels")
            elif shape != attrs:
                raise PrepareError(f"{name}: (width, height, channels) {shape} is not the first image's {attrs}")
            png = io.BytesIO()
            PIL.Image.fromarray(img, {1: "L", 3: "RGB"}[shape[2]]).save(png, format="png", compress_level=0)
            zf.writestr(_entry(name), png.getvalue())
            entries.append([name, label])
    return out


def link_prepared(path: str | Path, out: str | Path) -> Path:
    """A dataset zip prepared elsewhere: check that it is a zip holding images, then symlink `out` to it."""
    path, out = Path(path), Path(out)
    if not path.is_file():
        raise _missing(
            path,
            "prepared dataset (a zip written by EDM's dataset_tool.py or `eldistill prepare-dataset`)",
        )
    try:
        with zipfile.ZipFile(path) as zf:
            if not any(n.lower().endswith((*IMAGE_EXTENSIONS, ".npy")) for n in zf.namelist()):
                raise PrepareError(f"{path}: the zip holds no images")
    except zipfile.BadZipFile as e:
        raise PrepareError(f"{path}: not a readable zip ({e})") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.lnk")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(path.resolve())
    os.replace(tmp, out)
    return out


def prepare_dataset(
    source: str,
    input: str | Path,
    out: str | Path,
    resolution: int | None = None,
    transform: str = "none",
    max_images: int | None = None,
    vae: str | Path | None = None,
    device: str = "cpu",
    vae_batch: int = 8,
    **source_args,
) -> Path:
    """Write `out` from `input` (see the module docstring); returns `out`. With `vae`, EDM2's latent dataset."""
    if source == "zip":
        return link_prepared(input, out)
    if transform not in TRANSFORMS:
        raise PrepareError(f"transform {transform!r} is unknown; choose one of {', '.join(TRANSFORMS)}")
    if Path(out).suffix.lower() != ".zip":
        raise PrepareError(f"output must be a .zip path, got {out}")
    reader = _load_source(source)
    count, items = reader(input, max_images=max_images, **source_args)
    transformed = (
        (img, label)
        for img, label in ((transform_image(i, transform, resolution), lab) for i, lab in items)
        if img is not None
    )
    if vae is not None:
        from eldistill.data.encode_latents import write_latent_zip

        return write_latent_zip(transformed, count, out, vae, device=device, batch_size=vae_batch)
    return write_edm_zip(transformed, count, out, desc=f"writing {Path(out).name}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, help=f"{', '.join([*SOURCES, 'zip'])}")
    parser.add_argument("--input", required=True, help="the tarball, image folder or prepared zip")
    parser.add_argument("--out", required=True, help="output zip (EDM's layout)")
    parser.add_argument("--resolution", type=int, default=None, help="output size (square); default: as the input")
    parser.add_argument("--transform", choices=TRANSFORMS, default="none", help="EDM dataset_tool.py's --transform")
    parser.add_argument("--max-images", type=int, default=None, help="keep only the first N images")
    parser.add_argument(
        "--vae", default=None, help="encode to EDM2's latent dataset with this local VAE folder (sd-vae-ft-mse)"
    )
    parser.add_argument("--device", default="cpu", help="where the VAE runs with --vae (cuda for ImageNet)")
    parser.add_argument("--vae-batch", type=int, default=8, help="images per VAE call with --vae")


def run(args: argparse.Namespace) -> int:
    try:
        path = prepare_dataset(
            args.source,
            args.input,
            args.out,
            args.resolution,
            args.transform,
            args.max_images,
            vae=args.vae,
            device=args.device,
            vae_batch=args.vae_batch,
        )
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0
