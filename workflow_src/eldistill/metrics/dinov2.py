"""FD_DINOv2, the second metric EDM2 reports for ImageNet 512 (edm2 calculate_metrics.py:52-80): Frechet
distance in the 1024-d features of DINOv2 ViT-L/14, against the `fd_dinov2` section of EDM2's img512.pkl.

Preprocessing as EDM2's default ('torch' resize mode): uint8 images -> bicubic resize to 224x224 with
antialiasing -> / 255 -> ImageNet mean/std normalisation -> the network.

EDM2 loads the network with torch.hub (which runs downloaded code and needs the network). Here the detector is
a TorchScript file, `dinov2-vitl14.pt`, made once on a machine with internet access, e.g.
    m = torch.hub.load("facebookresearch/dinov2:main", "dinov2_vitl14").eval()
    torch.jit.trace(m, torch.zeros(1, 3, 224, 224)).save("dinov2-vitl14.pt")
(that export has not been run here: this machine cannot reach torch.hub). The metric is computed only when
the file is given or present in the eldistill cache; it is never downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from eldistill.metrics.protocols import DINOV2_DIM, file_digest

DETECTOR_FILE = "dinov2-vitl14.pt"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def find_detector(path: str | Path | None = None) -> Path | None:
    """The detector file: `path` (must exist), else $ELDISTILL_DINOV2, else the eldistill cache; None if absent."""
    from eldistill.metrics.inception import cache_dir

    if path is not None:
        path = Path(path)
        if path.is_dir():
            path = path / DETECTOR_FILE
        if not path.is_file():
            raise ValueError(f"DINOv2 detector not found at {path} (--fd-dinov2); see eldistill.metrics.dinov2")
        return path
    for candidate in (os.environ.get("ELDISTILL_DINOV2"), cache_dir() / DETECTOR_FILE):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


class DinoV2Features:
    """1024-d DINOv2 features of uint8-valued float images (B, 3, H, W) in [0, 255], any resolution."""

    dim = DINOV2_DIM

    def __init__(self, path: str | Path, device: str = "cpu"):
        self.path = Path(path)
        try:
            self.model = torch.jit.load(str(self.path), map_location=device).eval()
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"DINOv2 detector {self.path}: not a loadable TorchScript file ({e})") from None
        self.device = torch.device(device)
        self.id = f"dinov2-vitl14:{file_digest(self.path)}"

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, torch.float32)
        x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bicubic", antialias=True)
        x = x / 255
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).reshape(1, -1, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).reshape(1, -1, 1, 1)
        features = self.model((x - mean) / std)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"DINOv2 detector {self.path}: returned {tuple(features.shape)}, expected (B, {self.dim})")
        return features.to(torch.float64)
