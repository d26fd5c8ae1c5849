"""The paper protocol's detector: the TorchScript translation of TF-Inception (inception-2015-12-05.pt),
run through clean-fid's legacy_tensorflow path (the network resizes to 299 inside, as EDM/SiD do).

The file is never downloaded here: it comes from an explicit path, $ELDISTILL_INCEPTION, the eldistill
cache, or clean-fid's own cache. `eldistill download` (issue "teachers") fetches it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from eldistill.metrics.protocols import INCEPTION_DIM, file_digest

DETECTOR_FILE = "inception-2015-12-05.pt"
DETECTOR_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"


def cache_dir() -> Path:
    return Path(os.environ.get("ELDISTILL_CACHE", Path.home() / ".cache" / "eldistill"))


def candidate_paths() -> list[Path]:
    """Where the detector is looked for when no path is given, in order."""
    paths = []
    if os.environ.get("ELDISTILL_INCEPTION"):
        paths.append(Path(os.environ["ELDISTILL_INCEPTION"]))
    paths.append(cache_dir() / DETECTOR_FILE)
    paths.append(Path("/tmp") / DETECTOR_FILE)  # where clean-fid itself caches it on Linux
    return paths


def find_detector(path: str | Path | None = None) -> Path:
    """The detector file, or a ValueError that names the file and where to put it (never a download)."""
    if path is not None:
        path = Path(path)
        if path.is_dir():
            path = path / DETECTOR_FILE
        if not path.is_file():
            raise ValueError(f"Inception detector not found at {path} (--feature-net); {_how_to_get()}")
        if path.name != DETECTOR_FILE:
            raise ValueError(f"Inception detector {path}: the file must be named {DETECTOR_FILE}")
        return path
    for candidate in candidate_paths():
        if candidate.is_file() and candidate.name == DETECTOR_FILE:
            return candidate
    looked = ", ".join(str(p) for p in candidate_paths())
    raise ValueError(f"Inception detector {DETECTOR_FILE} not found (looked in {looked}); {_how_to_get()}")


def _how_to_get() -> str:
    target = cache_dir() / DETECTOR_FILE
    return (
        f"download {DETECTOR_URL} on a machine with internet access and put it at {target} "
        f"(or pass its path with --feature-net, or set ELDISTILL_INCEPTION), e.g. "
        f"`eldistill download --url {DETECTOR_URL} --out {target}`"
    )


class InceptionFeatures:
    """2048-d pool3 features of uint8-valued float images (B, 3, H, W) in [0, 255], any resolution."""

    dim = INCEPTION_DIM

    def __init__(self, path: str | Path | None = None, device: str = "cpu"):
        from cleanfid.inception_torchscript import InceptionV3W

        self.path = find_detector(path)
        try:
            # download=False: clean-fid would otherwise fetch the file silently
            self.model = InceptionV3W(str(self.path.parent), download=False, resize_inside=True).to(device).eval()
        except RuntimeError as e:
            raise ValueError(f"Inception detector {self.path}: not a loadable TorchScript file ({e})") from None
        self.device = torch.device(device)
        self.id = f"tf-inception-2015-12-05:{file_digest(self.path)}"

    def check_images(self, channels: int, resolution: int) -> None:
        if channels not in (1, 3):
            raise ValueError(
                f"Inception features need pixel images with 1 or 3 channels, got {channels} "
                "(latent generators must be decoded to pixels first, which evaluate does not do yet)"
            )

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.round())  # inputs are uint8 values; remove clean-fid's ToTensor round-off

    @torch.no_grad()
    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax over the 1008 TF-Inception classes without the output bias, as StyleGAN/EDM's IS does."""
        return self.model.base(x.to(self.device).round(), no_output_bias=True)
