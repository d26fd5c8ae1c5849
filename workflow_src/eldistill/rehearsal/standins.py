"""`eldistill make-standins`: every file the paper grid downloads or a site provides, as a tiny stand-in of the same
format, so that config/paper.yaml's DAG runs end to end on CPUs (config/rehearsal.yaml points at these files).

Written under OUT (default `rehearsal/`, relative to the working directory):
    standins/teachers/<paper teacher>.pkl   EDM/EDM2 persistence pickles (eldistill.rehearsal.edm_pickle) of tiny
                                            networks of the published classes: EDMPrecond + SongUNet DDPM++ (CIFAR-10,
                                            FFHQ, AFHQv2), EDMPrecond + DhariwalUNet/ADM (ImageNet 64), EDM2's
                                            Precond + UNet (ImageNet 512 latents), at 8x8 (PIXELS)
    standins/cifar-10-python.tar.gz         the CIFAR-10 python tarball's format (pickled batches), few images
    standins/inception-2015-12-05.pt        a TorchScript module with the detector's interface (clean-fid's
                                            InceptionV3W calls base(x, return_features=True) -> (B, 2048))
    standins/lpips/vgg16.pth, vgg.pth       LPIPS weights in the published state-dict formats (torchvision's VGG16
                                            `features.<i>.*`, PerceptualSimilarity v0.1's `lin<k>.model.1.weight`),
                                            full VGG16 shapes, random values
    standins/fid-refs/*.npz, img512.pkl     reference statistics in EDM's (.npz: mu, sigma) and EDM2's
                                            (.pkl: {"fid": {"mu", "sigma"}}) formats, 2048-d
    data/downloads/...                      the image folders a site downloads itself (FFHQ's images1024x1024,
                                            AFHQv2, ImageNet's CLS-LOC/train with synset sub-folders)
    data/sd-vae-ft-mse/                     the SD VAE folder a site keeps (diffusers' config.json + safetensors
                                            weights): a tiny AutoencoderKL with the same 8x down-sampling and 4
                                            latent channels, which encodes the ImageNet 512 latents and decodes FID
                                            samples
Every file is byte-for-byte deterministic (fixed seeds, fixed zip and tar times, renumbered tensor storage keys),
so config/rehearsal.yaml can pin each URL's sha256; tests/workflow/test_rehearsal.py checks that they agree.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import pickle
import re
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from eldistill.io import atomic_write_bytes
from eldistill.nets import build_network, preset
from eldistill.rehearsal.edm_pickle import write_edm_pickle

SEED = 0
CLASSES = 10  # the stand-ins' conditional datasets and teachers have 10 classes (ImageNet: 10 synsets)
# The stand-ins work at 8x8 (ImageNet 512: 8x8x4 latents of 64x64 images): one iteration of every paper cell at
# its own batch (up to 8192) must fit the rehearsal's CPU budget; config/rehearsal.yaml prepares the datasets at
# these sizes (datasets.*.prepare.resolution) while the rows keep the paper's resolutions.
PIXELS = 8
TINY_SONG = dict(model_channels=16, channel_mult=[1, 1], num_blocks=1, attn_resolutions=[], img_resolution=PIXELS)
TEACHERS = {  # paper teacher -> the network config of its stand-in (the published class, tiny)
    "edm-cifar10-32x32-uncond-vp": preset("cifar10", **TINY_SONG, augment_dim=9),
    "edm-cifar10-32x32-cond-vp": preset("cifar10", **TINY_SONG, augment_dim=9, label_dim=CLASSES),
    "edm-ffhq-64x64-uncond-vp": preset("ffhq64", **TINY_SONG, augment_dim=9),
    "edm-afhqv2-64x64-uncond-vp": preset("afhqv2-64", **TINY_SONG, augment_dim=9),
    "edm-imagenet-64x64-cond-adm": preset(
        "imagenet64",
        model_channels=16,
        channel_mult=[1, 1],
        num_blocks=1,
        attn_resolutions=[PIXELS],
        label_dim=CLASSES,
        img_resolution=PIXELS,
    ),  # fmt: skip
    "edm2-img512-xs-2147483-0.135": preset(
        "edm2-xs",
        img_resolution=PIXELS,
        model_channels=16,
        channel_mult=[1, 2],
        num_blocks=1,
        attn_resolutions=[PIXELS],
        label_dim=CLASSES,
        use_fp16=False,
        channels_per_head=16,
        logvar_channels=16,
    ),  # fmt: skip
}
REFERENCES = ("cifar10-32x32.npz", "ffhq-64x64.npz", "afhqv2-64x64.npz", "imagenet-64x64.npz", "img512.pkl")


def _rng(name: str) -> np.random.Generator:
    """A generator per file, so adding a file never changes another's bytes."""
    return np.random.default_rng([SEED, int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)])


def _fixed_zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buffer.getvalue()


def _images(name: str, count: int, height: int, width: int) -> np.ndarray:
    """Smooth random colour images (uint8, NHWC): low-resolution noise, upsampled, so that images have structure."""
    rng = _rng(name)
    small = torch.from_numpy(rng.uniform(0, 255, size=(count, 3, 4, 4)))
    big = torch.nn.functional.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
    return big.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, format="png")
    return buffer.getvalue()


# --- writers ---------------------------------------------------------------------------------------------------
def write_teacher(name: str, path: Path) -> Path:
    config = TEACHERS[name]
    torch.manual_seed(SEED)
    net = build_network(config)
    with torch.no_grad():  # EDM zero-initialises output layers: give every weight a value, as a trained net has
        gen = torch.Generator().manual_seed(SEED)
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    edm2 = config["class_name"] == "EDM2Precond"
    return write_edm_pickle(path, net.half() if edm2 else net, edm2=edm2)  # EDM2 keeps its EMA in float16


def write_cifar10_tarball(path: Path, per_batch: int = 40) -> Path:
    """cifar-10-python.tar.gz's layout: cifar-10-batches-py/data_batch_1..5 and test_batch, each a pickled dict
    with `data` (N, 3072) uint8 rows (CHW) and `labels`; fixed times, so the bytes never change."""
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            images = _images(f"cifar10/{batch}", per_batch, 32, 32)
            labels = [int(i % CLASSES) for i in range(per_batch)]
            record = {
                "batch_label": batch,
                "labels": labels,
                "data": np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(per_batch, 3072),
                "filenames": [f"standin_{i}.png" for i in range(per_batch)],
            }
            data = pickle.dumps(record, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{batch}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return atomic_write_bytes(gzip.compress(tar_bytes.getvalue(), mtime=0), path)


def write_image_folders(data_root: Path) -> list[Path]:
    """FFHQ (128x128 PNGs in numbered folders), AFHQv2 (96x96, cat/dog/wild) and ImageNet (non-square, synset
    folders) at the paths config/paper.yaml's `prepare.input` names under data_root/downloads/."""
    folders = []
    layouts = {
        "ffhq/images1024x1024": [("00000", 24, 128, 128)],
        "afhqv2": [(kind, 8, 96, 96) for kind in ("cat", "dog", "wild")],
        "imagenet/ILSVRC/Data/CLS-LOC/train": [(f"n{k:08d}", 3, 72, 96) for k in range(CLASSES)],
    }
    for folder, groups in layouts.items():
        root = data_root / "downloads" / folder
        for sub, count, height, width in groups:
            for i, image in enumerate(_images(f"{folder}/{sub}", count, height, width)):
                atomic_write_bytes(_png(image), root / sub / f"{sub}_{i:05d}.png")
        folders.append(root)
    return folders


class _Trunk(torch.nn.Module):
    """Two strided convolutions, a 4x4 pool and a linear map to 2048 features. Written with functional calls: torch's
    own layers carry TorchScript constants whose order in the saved code follows Python's string hashing."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Parameter(torch.randn(16, 3, 3, 3) * 0.3)
        self.conv2 = torch.nn.Parameter(torch.randn(32, 16, 3, 3) * 0.1)
        self.linear = torch.nn.Parameter(torch.randn(2048, 512) * 0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(torch.nn.functional.conv2d(x, self.conv1, None, 2, 1))
        x = torch.relu(torch.nn.functional.conv2d(x, self.conv2, None, 2, 1))
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1) @ self.linear.t()


class _StandinInception(torch.nn.Module):
    """clean-fid's InceptionV3W interface: forward(x uint8-valued float (B, 3, H, W), return_features) -> pool
    features (B, 2048), else class probabilities (B, 1008); `layers` is the trunk without resizing."""

    def __init__(self):
        super().__init__()
        self.layers = _Trunk()
        self.output_weight = torch.nn.Parameter(torch.randn(1008, 2048) * 0.02)
        self.output_bias = torch.nn.Parameter(torch.randn(1008) * 0.02)

    def forward(self, x: torch.Tensor, return_features: bool = False, no_output_bias: bool = False) -> torch.Tensor:
        x = torch.nn.functional.interpolate(x, size=[32, 32], mode="bilinear", align_corners=False)  # real: 299
        features = self.layers((x - 128) / 128)
        if return_features:
            return features
        logits = features @ self.output_weight.t()
        if not no_output_bias:
            logits = logits + self.output_bias
        return torch.softmax(logits, dim=1)


def write_inception(path: Path) -> Path:
    """The TorchScript stand-in, re-zipped with fixed times and no debug records (they hold this file's path and
    torch.jit.save adds a random serialization id), so the bytes do not depend on where or when it was made."""
    torch.manual_seed(SEED)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # TorchScript is deprecated, but it is the published detector's format
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(_StandinInception().eval()), buffer)
    entries = {}
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as zf:
        for info in zf.infolist():
            if info.filename.endswith(".debug_pkl"):
                continue
            data = zf.read(info)
            if info.filename.endswith(".data/serialization_id"):
                data = b"0" * len(data)
            entries[info.filename] = data
    return atomic_write_bytes(_fixed_zip(entries), path)


def write_reference(name: str, path: Path) -> Path:
    """2048-d statistics in the published formats: mu ~ N(0, 0.1^2), a diagonal sigma (elementwise only, so the
    bytes are the same on every machine)."""
    rng = _rng(f"fid-refs/{name}")
    mu = rng.normal(0.0, 0.1, size=2048)
    sigma = np.diag(rng.uniform(0.01, 0.1, size=2048))
    if name.endswith(".pkl"):  # EDM2: a pickled dict, {"fid": {"mu", "sigma"}}
        return atomic_write_bytes(pickle.dumps({"fid": {"mu": mu, "sigma": sigma}}, protocol=4), path)
    entries = {}
    for key, value in (("mu", mu), ("sigma", sigma)):
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.ascontiguousarray(value), allow_pickle=False)
        entries[f"{key}.npy"] = buffer.getvalue()
    return atomic_write_bytes(_fixed_zip(entries), path)


def tiny_autoencoderkl(channels: int = 8, norm_groups: int = 4, sample_size: int = 32):
    """diffusers' AutoencoderKL at the SD VAE's shape (4 blocks: 8x down/up-sampling, 4 latent channels), tiny,
    with weights from torch's global generator (the caller seeds it)."""
    import diffusers

    return diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(channels,) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=norm_groups,
        sample_size=sample_size,
    )


def write_vae(folder: Path) -> Path:
    """The SD VAE folder a site keeps (diffusers' config.json + safetensors weights), a tiny_autoencoderkl."""
    torch.manual_seed(SEED)
    tiny_autoencoderkl(sample_size=64).save_pretrained(folder)
    return folder


def _fixed_torch_save(state: dict, path: Path) -> Path:
    """torch.save, re-zipped with fixed times and serialization id (torch.save draws a random one)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    entries = {}
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as zf:
        for info in zf.infolist():
            data = zf.read(info)
            entries[info.filename] = b"0" * len(data) if info.filename.endswith("serialization_id") else data
    return atomic_write_bytes(_fixed_zip(entries), path)


def write_lpips(folder: Path) -> dict[str, Path]:
    """LPIPS's two published files with their exact key names and shapes (random values, fixed seed)."""
    from eldistill.distillers.lpips import CHANNELS, vgg16_features

    gen = torch.Generator().manual_seed(SEED)
    shapes = {f"features.{k}": v.shape for k, v in vgg16_features().state_dict().items()}
    vgg = {key: torch.randn(shape, generator=gen) * 0.02 for key, shape in shapes.items()}
    lin = {f"lin{k}.model.1.weight": torch.rand((1, c, 1, 1), generator=gen) * 0.1 for k, c in enumerate(CHANNELS)}
    return {
        "lpips/vgg16.pth": _fixed_torch_save(vgg, folder / "vgg16.pth"),
        "lpips/vgg.pth": _fixed_torch_save(lin, folder / "vgg.pth"),
    }


def make_standins(out: str | Path = "rehearsal") -> dict[str, Path]:
    """Write every stand-in under OUT; returns {relative path: path} of the files served by URL."""
    out = Path(out)
    standins = out / "standins"
    served = {}
    for name in TEACHERS:
        served[f"teachers/{name}.pkl"] = write_teacher(name, standins / "teachers" / f"{name}.pkl")
    served["cifar-10-python.tar.gz"] = write_cifar10_tarball(standins / "cifar-10-python.tar.gz")
    served["inception-2015-12-05.pt"] = write_inception(standins / "inception-2015-12-05.pt")
    served.update(write_lpips(standins / "lpips"))
    for name in REFERENCES:
        served[f"fid-refs/{name}"] = write_reference(name, standins / "fid-refs" / name)
    write_image_folders(out / "data")
    write_vae(out / "data" / "sd-vae-ft-mse")
    return served


def pin(config: str | Path, digests: dict[str, str]) -> int:
    """Rewrite the `sha256:` line after each `url: "file:rehearsal/standins/<name>"` of an overlay config (text
    edit: comments stay); returns how many pins changed."""
    lines = Path(config).read_text().splitlines(keepends=True)
    changed = 0
    for i, line in enumerate(lines[:-1]):
        url = re.search(r'url: "file:rehearsal/standins/([^"]+)"', line)
        pinned = re.match(r"(\s*sha256: )([0-9a-f]{64})(\s*)$", lines[i + 1])
        if url and pinned and url.group(1) in digests and pinned.group(2) != digests[url.group(1)]:
            lines[i + 1] = pinned.group(1) + digests[url.group(1)] + pinned.group(3)
            changed += 1
    Path(config).write_text("".join(lines))
    return changed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="rehearsal", help="folder to write into (config/rehearsal.yaml: rehearsal)")
    parser.add_argument("--pin", default=None, help="also rewrite the sha256 pins of this overlay config")


def run(args: argparse.Namespace) -> int:
    served = make_standins(args.out)
    digests = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in served.items()}
    for name, path in served.items():
        print(f"{digests[name]}  {path}")
    if args.pin:
        print(f"{args.pin}: {pin(args.pin, digests)} sha256 pin(s) updated")
    return 0
