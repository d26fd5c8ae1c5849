"""The two FID protocols, their reference-statistics files, and the checks that keep numbers comparable.

A reference file records the protocol (and feature network) it was computed under. Published EDM `.npz`
(`mu`, `sigma`) and EDM2 `.pkl` (`{'fid': {'mu', 'sigma'}, ...}`) files record nothing; they are the
paper protocol's by construction and are accepted as such when their features are 2048-d.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eldistill.io import atomic_write_bytes
from eldistill.untrusted import load_pickle
from eldistill.untrusted.arrays import PICKLE_GLOBALS as NUMPY_PICKLE_GLOBALS
from eldistill.untrusted.arrays import read_npz

PAPER = "fid50k-tf-inception"
MINI = "mini-classifier"
REHEARSAL = "rehearsal"  # the paper's evaluation pipeline on stand-in files (config/rehearsal.yaml)
INCEPTION_PROTOCOLS = (PAPER, REHEARSAL)  # read a TorchScript detector file and published-format references
INCEPTION_DIM = 2048
# The metrics of an EDM2 reference .pkl: FID, and FD_DINOv2 which EDM2 and SiDA also report (ImageNet 512).
FID = "fid"
FD_DINOV2 = "fd_dinov2"
DINOV2_DIM = 1024


@dataclass(frozen=True)
class Protocol:
    name: str
    required_samples: int | None  # exactly this many generated images, or None = any (>= 2)
    default_samples: int
    paper_comparable: bool
    description: str


PROTOCOLS: dict[str, Protocol] = {
    PAPER: Protocol(
        PAPER,
        50_000,
        50_000,
        True,
        "TF-Inception pool3 features (clean-fid legacy_tensorflow, inception-2015-12-05.pt), exactly 50,000 "
        "generated images, published reference statistics",
    ),
    MINI: Protocol(
        MINI,
        None,
        5_000,
        False,
        "features of the miniature classifier trained on the miniature dataset; NOT comparable with paper FIDs",
    ),
    REHEARSAL: Protocol(
        REHEARSAL,
        None,
        64,
        False,
        "the paper protocol's pipeline (a TorchScript detector file, reference statistics in EDM's and EDM2's "
        "published formats) with any number of images, run on stand-ins of those files; NOT comparable",
    ),
}


class ProtocolError(ValueError):
    """An FID request that would produce a number under the wrong or a mixed protocol."""


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ProtocolError(f"protocol {name!r} is unknown; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def check_num_samples(protocol: Protocol, num_samples: int) -> None:
    if protocol.required_samples is not None and num_samples != protocol.required_samples:
        raise ProtocolError(
            f"num_samples = {num_samples}: protocol {protocol.name} needs exactly {protocol.required_samples:,} "
            f"generated images (fewer changes the FID's bias and makes it incomparable with the paper); "
            f"use protocol {MINI} for quick checks"
        )
    if num_samples < 2:
        raise ProtocolError(f"num_samples = {num_samples}: need at least 2 images for a covariance")


def file_digest(path: str | Path, length: int = 12) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]


@dataclass
class Reference:
    mu: np.ndarray
    sigma: np.ndarray
    protocol: str
    feature_net: str | None  # None for published files (the TF-Inception detector is implied)
    num_images: int | None
    ref_id: str  # file name and content hash: what FID records cite

    def check(self, protocol: Protocol, feature_net_id: str, path: str | Path) -> None:
        """Refuse to compare features from another protocol or another feature network. A published file
        (which records nothing) serves both protocols that read the detector file."""
        published = self.protocol == PAPER and self.feature_net is None
        if self.protocol != protocol.name and not (published and protocol.name in INCEPTION_PROTOCOLS):
            raise ProtocolError(
                f"reference {path} was computed under protocol {self.protocol!r}, not {protocol.name!r}; "
                f"make one with `eldistill ref-stats --protocol {protocol.name}`"
            )
        if self.feature_net is not None and self.feature_net != feature_net_id:
            raise ProtocolError(
                f"reference {path} was computed with feature network {self.feature_net!r}, but this evaluation "
                f"uses {feature_net_id!r}; recompute the reference with the same --feature-net"
            )


def _read_pkl(path: Path, metric: str = "fid") -> dict:
    with open(path, "rb") as f:  # numpy arrays rebuilt from checked bytes; any other global (code) is refused
        data = load_pickle(f, f"reference {path}", NUMPY_PICKLE_GLOBALS)
    if not isinstance(data, dict) or not isinstance(data.get(metric), dict):
        found = sorted(k for k in data if isinstance(data[k], dict)) if isinstance(data, dict) else []
        raise ValueError(
            f"reference {path}: expected EDM2's {{'{metric}': {{'mu', 'sigma'}}, ...}} layout (metrics found: {found})"
        )
    stats = data[metric]
    return {"mu": stats.get("mu"), "sigma": stats.get("sigma"), "num_images": data.get("num_images")}


def _read_npz(path: Path) -> dict:
    try:
        return read_npz(path)
    except ValueError as e:
        raise ValueError(f"reference {e}") from None


def load_reference(path: str | Path, metric: str = "fid") -> Reference:
    """Read our `.npz`, EDM's `.npz` or EDM2's `.pkl` reference statistics, without executing code. `metric`
    picks the section of an EDM2 `.pkl`: "fid" (Inception) or "fd_dinov2" (DINOv2 ViT-L/14, 1024-d)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"reference statistics file not found: {path}")
    if metric not in (FID, FD_DINOV2):
        raise ValueError(f"reference metric {metric!r} is unknown; choose {FID} or {FD_DINOV2}")
    if metric == FD_DINOV2 and path.suffix != ".pkl":
        raise ValueError(f"reference {path}: FD_DINOv2 statistics come from EDM2's .pkl files (e.g. img512.pkl)")
    data = _read_pkl(path, metric) if path.suffix == ".pkl" else _read_npz(path)
    mu, sigma = data.get("mu"), data.get("sigma")
    if mu is None or sigma is None:
        raise ValueError(f"reference {path}: needs 'mu' and 'sigma'")
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"reference {path}: 'mu' {mu.shape} and 'sigma' {sigma.shape} do not match")
    if "protocol" in data:
        protocol = str(data["protocol"])
        feature_net = str(data["feature_net"]) if "feature_net" in data else None
    elif mu.shape[0] == {FID: INCEPTION_DIM, FD_DINOV2: DINOV2_DIM}[metric]:
        protocol, feature_net = PAPER, None  # a published EDM/EDM2 file
    else:
        raise ValueError(
            f"reference {path}: records no protocol and its {mu.shape[0]}-d features are not Inception's; "
            "make references with `eldistill ref-stats`"
        )
    num = data.get("num_images")
    num_images = int(num) if num is not None else None
    return Reference(mu, sigma, protocol, feature_net, num_images, f"{path.name}:{file_digest(path)}")


def save_reference(
    path: str | Path,
    mu: np.ndarray,
    sigma: np.ndarray,
    protocol: str,
    feature_net: str,
    num_images: int,
    dataset: str,
) -> Path:
    """Our reference format: an `.npz` holding EDM's keys plus the protocol it was computed under."""
    get_protocol(protocol)
    if Path(path).suffix != ".npz":
        raise ValueError(f"reference output {path}: must end in .npz")
    buffer = io.BytesIO()
    np.savez(
        buffer,
        mu=np.asarray(mu, np.float64),
        sigma=np.asarray(sigma, np.float64),
        protocol=np.array(protocol),
        feature_net=np.array(feature_net),
        num_images=np.array(num_images, np.int64),
        dataset=np.array(str(dataset)),
    )
    return atomic_write_bytes(buffer.getvalue(), path)


def load_feature_net(protocol: Protocol, path: str | Path | None = None, device: str = "cpu"):
    """The protocol's feature network: a callable on float (B, 3, H, W) images in [0, 255] -> (B, D), with
    `.id` (what records cite) and `.dim`. For the paper protocol `path` is the Inception detector file
    (optional: a cache is searched); for the miniature it is the classifier checkpoint (required)."""
    if protocol.name in INCEPTION_PROTOCOLS:
        from eldistill.metrics.inception import InceptionFeatures

        return InceptionFeatures(path, device)
    if path is None:
        raise ValueError(f"protocol {MINI} needs --feature-net (a checkpoint from `eldistill train-classifier`)")
    from eldistill.metrics.classifier import ClassifierFeatures

    return ClassifierFeatures(path, device)


def load_second_detector(protocol: Protocol, path: str | Path | None = None, device: str = "cpu"):
    """The paper protocol's second metric, FD_DINOv2 (edm2 calculate_metrics.py): its detector when the file
    is given or present in the cache (eldistill.metrics.dinov2.find_detector), else None. The miniature
    protocol has none."""
    if protocol.name != PAPER:
        if path is not None:
            raise ProtocolError(f"protocol {protocol.name} has no FD_DINOv2; drop --fd-dinov2")
        return None
    from eldistill.metrics.dinov2 import DinoV2Features, find_detector

    found = find_detector(path)
    return None if found is None else DinoV2Features(found, device)
