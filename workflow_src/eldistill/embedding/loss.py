"""The Embedding Loss: mean over K frozen random embedders psi_k of MMD^2(psi_k(x_gen), psi_k(x_real)).

The module owns its ensemble but has no parameters and an empty state_dict (the embedders are rebuilt
from the seed), so it can sit next to any generator without entering its optimizer or its checkpoint.
Keep it outside the generator module (and outside DDP): each rank builds the same ensemble from the seed,
and the generator's own DDP averages the gradients that EL sends back through x_gen.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .embedders import FAMILIES, GroupedEmbedder, build_embedder
from .mmd import (
    ESTIMATORS,
    batched_median_distance,
    batched_mmd2_unchecked,
    check_finite,
    median_distance,
    mmd2_unchecked,
)

BANDWIDTH_MODES = ("median", "fixed")
FEATURE_NORMS = ("none", "l2", "standardize")


def normalize_features(f_gen: torch.Tensor, f_real: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """ "l2": each feature vector to unit length. "standardize": each dimension to zero mean, unit variance
    with the statistics of the pooled batch, taken without gradient (a fixed affine map per step).
    Features are (B, D), or (K, B, D) for K embedders at once (statistics per embedder)."""
    if mode == "none":
        return f_gen, f_real
    if mode == "l2":
        return nn.functional.normalize(f_gen, dim=-1), nn.functional.normalize(f_real, dim=-1)
    if mode == "standardize":
        with torch.no_grad():
            pooled = torch.cat([f_gen, f_real], -2).detach()
            mean, std = pooled.mean(-2, keepdim=True), pooled.std(-2, keepdim=True).clamp_min(1e-6)
        # Divide by sqrt(D) again so distances stay O(1) whatever the feature dimension.
        scale = 1.0 / (std * f_gen.shape[-1] ** 0.5)
        return (f_gen - mean) * scale, (f_real - mean) * scale
    raise ValueError(f"feature_norm is {mode!r}; choose one of {', '.join(FEATURE_NORMS)}")


def embedder_mmd2(
    embedder: nn.Module,
    x_gen: torch.Tensor,
    x_real: torch.Tensor,
    bandwidths: Sequence[float],
    bandwidth_mode: str = "median",
    estimator: str = "unbiased",
    feature_norm: str = "none",
) -> torch.Tensor:
    """MMD^2(psi(x_gen), psi(x_real)) for one embedder psi; the real features carry no gradient."""
    f_gen = embedder(x_gen)
    with torch.no_grad():
        f_real = embedder(x_real)
    f_gen, f_real = normalize_features(f_gen, f_real, feature_norm)
    bw = torch.tensor(bandwidths, dtype=f_gen.dtype, device=f_gen.device)
    if bandwidth_mode == "median":
        bw = bw * median_distance(f_gen, f_real)
    return mmd2_unchecked(f_gen, f_real, bw, estimator)


def grouped_mmd2(
    group: GroupedEmbedder,
    x_gen: torch.Tensor,
    x_real: torch.Tensor,
    bandwidths: Sequence[float],
    bandwidth_mode: str = "median",
    estimator: str = "unbiased",
    feature_norm: str = "none",
) -> torch.Tensor:
    """(K,) embedder_mmd2 of each of a family's K embedders, from one grouped forward per batch."""
    f_gen = group(x_gen)
    with torch.no_grad():
        f_real = group(x_real)
    return family_mmd2(f_gen, f_real, bandwidths, bandwidth_mode, estimator, feature_norm)


def family_mmd2(
    f_gen: torch.Tensor,
    f_real: torch.Tensor,
    bandwidths: Sequence[float],
    bandwidth_mode: str = "median",
    estimator: str = "unbiased",
    feature_norm: str = "none",
) -> torch.Tensor:
    """(K,) MMD^2 of K embedders' features, f_gen (K, n, D) against f_real (K, m, D). Normalisation and the
    median bandwidth are taken over exactly these rows, so the caller decides which batch they come from."""
    f_gen, f_real = normalize_features(f_gen, f_real, feature_norm)
    bw = torch.tensor(bandwidths, dtype=f_gen.dtype, device=f_gen.device).expand(f_gen.shape[0], -1)
    if bandwidth_mode == "median":
        bw = bw * batched_median_distance(f_gen, f_real).unsqueeze(1)
    return batched_mmd2_unchecked(f_gen, f_real, bw, estimator)


class EmbeddingLoss(nn.Module):
    """EL over an ensemble of len(archs) x inits_per_arch embedders; embedder (family, i) is built from seed + i.

    forward(x_gen, x_real) -> (el, per_embedder): el is the mean of the K per-embedder MMD^2 values.
    Inputs are images in [-1, 1], (B, in_channels, H, W), any resolution (resized to working_size).
    The inits of one family run as one grouped network (embedders.GroupedEmbedder: same weights, one forward);
    grouped=False runs the K embedders one by one (the reference the grouped path is tested against).
    Gradients reach x_gen only; half-precision inputs and autocast regions are computed in float32.
    NaN/inf in x_real (a data problem) raises NonFiniteInputError, a ValueError. NaN/inf in x_gen (a
    diverging generator) gives a NaN loss by default, so the training loop's non-finite-step guard skips
    the step on every rank alike; check_gen_finite=True raises for it too.
    """

    def __init__(
        self,
        archs: Sequence[str] = FAMILIES,
        inits_per_arch: int = 4,
        bandwidths: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
        bandwidth_mode: str = "median",
        estimator: str = "unbiased",
        feature_norm: str = "none",
        working_size: int = 32,
        seed: int = 0,
        in_channels: int = 3,
        check_gen_finite: bool = False,
        grouped: bool = True,
    ):
        super().__init__()
        if isinstance(archs, str):
            archs = [archs]
        unknown = [a for a in archs if a not in FAMILIES]
        if unknown or not archs:
            raise ValueError(f"archs has {unknown or 'no families'}; choose from {', '.join(FAMILIES)}")
        if len(set(archs)) != len(archs):
            raise ValueError(f"archs lists a family twice: {list(archs)}")
        if not isinstance(inits_per_arch, int) or isinstance(inits_per_arch, bool) or inits_per_arch < 1:
            raise ValueError(f"inits_per_arch must be a positive integer, got {inits_per_arch!r}")
        bandwidths = [float(b) for b in bandwidths]
        if not bandwidths or any(not b > 0 or b == float("inf") for b in bandwidths):
            raise ValueError(f"bandwidths must be a non-empty list of positive numbers, got {bandwidths!r}")
        if bandwidth_mode not in BANDWIDTH_MODES:
            raise ValueError(f"bandwidth_mode is {bandwidth_mode!r}; choose one of {', '.join(BANDWIDTH_MODES)}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator is {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(f"feature_norm is {feature_norm!r}; choose one of {', '.join(FEATURE_NORMS)}")
        self.archs, self.inits_per_arch = list(archs), inits_per_arch
        self.bandwidths, self.bandwidth_mode = bandwidths, bandwidth_mode
        self.estimator, self.feature_norm = estimator, feature_norm
        self.working_size, self.seed, self.in_channels = working_size, int(seed), in_channels
        self.check_gen_finite = check_gen_finite
        self.embedders = nn.ModuleList(
            [build_embedder(a, seed + i, in_channels, working_size) for a in self.archs for i in range(inits_per_arch)]
        )
        self.names = [f"{a}/{i}" for a in self.archs for i in range(inits_per_arch)]
        self.grouped = grouped
        seeds = [seed + i for i in range(inits_per_arch)]
        self.groups = nn.ModuleList(
            [GroupedEmbedder(a, seeds, in_channels, working_size) for a in self.archs] if grouped else []
        )

    @classmethod
    def from_config(cls, el, in_channels: int) -> EmbeddingLoss:
        """From an `eldistill.cell.ELConfig` (its weight is the training loop's business, not ours)."""
        return cls(
            archs=el.archs,
            inits_per_arch=el.inits_per_arch,
            bandwidths=el.bandwidths,
            bandwidth_mode=el.bandwidth_mode,
            estimator=el.estimator,
            feature_norm=el.feature_norm,
            working_size=el.working_size,
            seed=el.seed,
            in_channels=in_channels,
        )

    def extra_repr(self) -> str:
        return (
            f"K={len(self.names)}, archs={self.archs}, inits_per_arch={self.inits_per_arch}, "
            f"bandwidths={self.bandwidths} ({self.bandwidth_mode}), estimator={self.estimator}, "
            f"feature_norm={self.feature_norm}, working_size={self.working_size}, seed={self.seed}"
        )

    def train(self, mode: bool = True) -> EmbeddingLoss:
        return super().train(False)  # the embedders are frozen: never in training mode

    def _check_images(self, x: torch.Tensor, name: str, finite: bool = True, min_batch: int = 1) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{name} must be images (B, C, H, W), got shape {tuple(getattr(x, 'shape', ()))}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{name} has {x.shape[1]} channels; this EmbeddingLoss was built for {self.in_channels}")
        if x.shape[0] == 0:
            raise ValueError(f"{name} is an empty batch")
        if x.shape[0] < min_batch:
            raise ValueError(f"{name} has batch {x.shape[0]}; the unbiased estimator needs at least 2 images")
        if finite:
            check_finite(x, name)

    def embedder_mmd2(self, embedder: nn.Module, x_gen: torch.Tensor, x_real: torch.Tensor) -> torch.Tensor:
        """MMD^2 in one embedder's features with this loss's settings (inputs already checked and cast)."""
        return embedder_mmd2(
            embedder, x_gen, x_real, self.bandwidths, self.bandwidth_mode, self.estimator, self.feature_norm
        )

    def features(self, images: torch.Tensor, name: str = "images", finite: bool = False) -> list[torch.Tensor]:
        """Each family's features of `images`, as one (inits_per_arch, B, D_family) tensor per entry of archs
        (row i of family a = embedder names 'a/i'); gradients flow to `images` when it requires them.
        Any batch size >= 1 (a batch of one is a valid part of a larger batch); `finite` checks for NaN/inf."""
        self._check_images(images, name, finite=finite)
        dtype = next(iter(self.buffers())).dtype
        with torch.autocast(device_type=images.device.type, enabled=False):
            images = images.to(dtype)
            if self.grouped:
                return [group(images) for group in self.groups]
            k, separate = self.inits_per_arch, self.embedders
            return [torch.stack([e(images) for e in separate[i : i + k]]) for i in range(0, len(separate), k)]

    def features_mmd2(self, f_gen: torch.Tensor, f_real: torch.Tensor) -> torch.Tensor:
        """(inits_per_arch,) MMD^2 of one family's features (an entry of `features`) with this loss's settings."""
        with torch.autocast(device_type=f_gen.device.type, enabled=False):
            return family_mmd2(f_gen, f_real, self.bandwidths, self.bandwidth_mode, self.estimator, self.feature_norm)

    def forward(self, x_gen: torch.Tensor, x_real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        least = 2 if self.estimator == "unbiased" else 1
        self._check_images(x_gen, "x_gen", finite=self.check_gen_finite, min_batch=least)
        self._check_images(x_real, "x_real", min_batch=least)
        dtype = next(iter(self.buffers())).dtype  # float32 unless the module was cast (e.g. .double())
        settings = (self.bandwidths, self.bandwidth_mode, self.estimator, self.feature_norm)
        with torch.autocast(device_type=x_gen.device.type, enabled=False):
            x_gen, x_real = x_gen.to(dtype), x_real.detach().to(dtype)
            if self.grouped:
                values = [grouped_mmd2(group, x_gen, x_real, *settings) for group in self.groups]
                per_embedder = torch.cat(values)
            else:
                per_embedder = torch.stack([self.embedder_mmd2(e, x_gen, x_real) for e in self.embedders])
        return per_embedder.mean(), per_embedder
