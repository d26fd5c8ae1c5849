"""Squared Maximum Mean Discrepancy with a multi-scale RBF kernel.

    k(a, b) = sum over bandwidths s of exp(-||a - b||^2 / (2 s^2))
    MMD^2(P, Q) = E k(x, x') - 2 E k(x, y) + E k(y, y')

Distances come from ||a||^2 + ||b||^2 - 2 a.b (memory O(n*m), never an (n, m, d) tensor), clamped at 0
so float32 round-off cannot make them negative.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.checkpoint import checkpoint

ESTIMATORS = ("unbiased", "biased")
# Above this many kernel entries (K x bandwidths x n x m, or K x N^2 pooled distances for the median) one family
# is computed in blocks of rows: the global EL of a batch-8192 cell (eldistill.global_el) would otherwise hold
# 4 x 4 x 8192^2 floats (4.3 GB) per kernel matrix, and as much again for the backward, which no CPU job (nor many
# GPUs) has. Blocks recompute their kernels in the backward (activation checkpointing) instead of keeping them.
# At or below it (every batch up to 2048 with 4 bandwidths) the one-shot path runs, bit for bit as before.
BLOCK_ELEMENTS = 2**26


class NonFiniteInputError(ValueError):
    """An input holds NaN or inf. A subclass so a training loop can count it as a non-finite step."""


def check_finite(x: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteInputError(f"{name} contains NaN or inf")


def pairwise_sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n, m) squared Euclidean distances between the rows of x (n, d) and y (m, d)."""
    d2 = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0) - 2.0 * (x @ y.T)
    return d2.clamp_min(0.0)


def _self_sq_dists(x: torch.Tensor) -> torch.Tensor:
    # The diagonal is exactly 0 by definition; the expansion leaves round-off there, so mask it.
    d2 = pairwise_sq_dists(x, x)
    return d2.masked_fill(torch.eye(x.shape[0], dtype=torch.bool, device=x.device), 0.0)


def _as_bandwidths(bandwidths, like: torch.Tensor) -> torch.Tensor:
    bw = torch.as_tensor(bandwidths, dtype=like.dtype, device=like.device).reshape(-1)
    if bw.numel() == 0:
        raise ValueError("bandwidths is empty; give at least one positive bandwidth")
    if not bool(torch.isfinite(bw).all()) or not bool((bw > 0).all()):
        raise ValueError(f"bandwidths must be finite and positive, got {bw.tolist()}")
    return bw


def rbf_kernel(d2: torch.Tensor, bandwidths: torch.Tensor) -> torch.Tensor:
    """Sum over bandwidths of exp(-d2 / (2 s^2)), same shape as d2 (one bandwidth at a time: no extra axis)."""
    k = torch.zeros_like(d2)
    for s in bandwidths:
        k = k + torch.exp(-d2 / (2.0 * s * s))
    return k


def median_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Median Euclidean distance between distinct points of the pooled set [x; y], without gradient."""
    with torch.no_grad():
        z = torch.cat([x, y]).detach()
        d2 = pairwise_sq_dists(z, z)
        i, j = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=z.device)
        med = d2[i, j].median().sqrt()
        # All points equal: any bandwidth gives MMD 0; avoid a zero bandwidth.
        return torch.where(med > 0, med, torch.ones_like(med))


def _check_pair(x: torch.Tensor, y: torch.Tensor, estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator is {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{name} must be a 2-D feature matrix (n, d), got shape {tuple(getattr(t, 'shape', ()))}")
        if t.shape[0] == 0 or t.shape[1] == 0:
            raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
        if estimator == "unbiased" and t.shape[0] < 2:
            raise ValueError(f"{name} has {t.shape[0]} sample; the unbiased estimator needs at least 2")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dims differ: x has {x.shape[1]}, y has {y.shape[1]}")
    check_finite(x, "x")
    check_finite(y, "y")


def mmd2(
    x: torch.Tensor,
    y: torch.Tensor,
    bandwidths: Sequence[float] | torch.Tensor,
    estimator: str = "unbiased",
) -> torch.Tensor:
    """Squared MMD between the rows of x (n, d) and y (m, d); differentiable in both.

    `bandwidths` are absolute kernel widths s. "biased" is the V-statistic (>= 0, exactly 0 for x == y);
    "unbiased" the U-statistic (drops the i == j terms of the within-set sums; can be slightly negative).
    Half-precision inputs are computed in float32; float64 stays float64.
    """
    _check_pair(x, y, estimator)
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    x, y = x.to(dtype), y.to(dtype)
    return mmd2_unchecked(x, y, _as_bandwidths(bandwidths, x), estimator)


def mmd2_unchecked(x: torch.Tensor, y: torch.Tensor, bandwidths: torch.Tensor, estimator: str) -> torch.Tensor:
    """`mmd2` without input checks (no host syncs): for callers that checked their inputs already."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        kxx = rbf_kernel(_self_sq_dists(x), bandwidths)
        kyy = rbf_kernel(_self_sq_dists(y), bandwidths)
        kxy = rbf_kernel(pairwise_sq_dists(x, y), bandwidths)
        n, m = x.shape[0], y.shape[0]
        if estimator == "biased":
            return kxx.mean() + kyy.mean() - 2.0 * kxy.mean()
        diag = float(bandwidths.numel())  # k(a, a) = number of bandwidths (distance 0 masked exactly)
        xx = (kxx.sum() - n * diag) / (n * (n - 1))
        yy = (kyy.sum() - m * diag) / (m * (m - 1))
        return xx + yy - 2.0 * kxy.mean()


# --- K feature sets at once (one embedder family's initialisations, see embedders.GroupedEmbedder) -----------


def batched_sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(K, n, m) squared distances between the rows of x (K, n, d) and y (K, m, d), clamped at 0."""
    d2 = x.pow(2).sum(2).unsqueeze(2) + y.pow(2).sum(2).unsqueeze(1) - 2.0 * torch.bmm(x, y.transpose(1, 2))
    return d2.clamp_min(0.0)


def _batched_self_sq_dists(x: torch.Tensor) -> torch.Tensor:
    d2 = batched_sq_dists(x, x)
    return d2.masked_fill(torch.eye(x.shape[1], dtype=torch.bool, device=x.device), 0.0)


def _upper_pair_values(z: torch.Tensor, rows: int) -> torch.Tensor:
    """The squared distances of the pairs i < j of the rows of z (N, d), computed `rows` rows at a time."""
    n = z.shape[0]
    parts = []
    for a in range(0, n, rows):
        block = pairwise_sq_dists(z[a : a + rows], z[a:])  # rows a.. against columns a.. (the rest are i > j)
        c = block.shape[0]
        upper = torch.ones(c, c, dtype=torch.bool, device=z.device).triu(1)
        parts += [block[:, :c][upper], block[:, c:].reshape(-1)]
    return torch.cat(parts)


def batched_median_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(K,) median_distance of each of the K pooled sets [x_k; y_k], without gradient."""
    with torch.no_grad():
        z = torch.cat([x, y], 1).detach()
        k, n = z.shape[0], z.shape[1]
        if k * n * n > BLOCK_ELEMENTS:  # one pooled set at a time, in blocks of rows; the same lower median
            rows = max(1, BLOCK_ELEMENTS // (4 * n))
            pairs = n * (n - 1) // 2
            med = torch.stack([_upper_pair_values(z[i], rows).kthvalue((pairs - 1) // 2 + 1).values for i in range(k)])
            med = med.sqrt()
            return torch.where(med > 0, med, torch.ones_like(med))
        d2 = batched_sq_dists(z, z)
        i, j = torch.triu_indices(z.shape[1], z.shape[1], offset=1, device=z.device)
        med = d2[:, i, j].median(dim=1).values.sqrt()  # the lower median, as torch.median of one set
        return torch.where(med > 0, med, torch.ones_like(med))


def _kernel_sum(d2: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Sum over pairs and bandwidths of the RBF kernel, (K,), from squared distances d2 (K, n, m)."""
    return torch.exp(d2.unsqueeze(1) * scale).sum((1, 2, 3))


def _block_kernel_sum(xb: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, offset: int) -> torch.Tensor:
    """_kernel_sum of the rows xb (K, c, d) against y (K, m, d); offset >= 0: xb is y[:, offset:offset + c] and
    its pairs with itself are left out (the diagonal of a self-distance matrix)."""
    d2 = batched_sq_dists(xb, y)
    if offset >= 0:
        rows = torch.arange(xb.shape[1], device=xb.device)
        diagonal = torch.zeros(d2.shape[1:], dtype=torch.bool, device=xb.device)
        diagonal[rows, rows + offset] = True
        d2 = d2.masked_fill(diagonal, 0.0)
    return _kernel_sum(d2, scale)


def _blocked_kernel_sum(x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, self_pairs: bool) -> torch.Tensor:
    """_kernel_sum over x against y in blocks of rows of x, each recomputed in the backward (checkpointed)."""
    k, s, n, m = x.shape[0], scale.shape[1], x.shape[1], y.shape[1]
    rows = max(1, BLOCK_ELEMENTS // (4 * k * s * m))
    total = x.new_zeros(k)
    for a in range(0, n, rows):
        offset = a if self_pairs else -1
        total = total + checkpoint(_block_kernel_sum, x[:, a : a + rows], y, scale, offset, use_reentrant=False)
    return total


def batched_mmd2_unchecked(x: torch.Tensor, y: torch.Tensor, bandwidths: torch.Tensor, estimator: str) -> torch.Tensor:
    """(K,) MMD^2 of each pair (x_k, y_k); x (K, n, d), y (K, m, d), bandwidths (K, S) (one row per k)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        scale = (-0.5 / bandwidths.pow(2)).unsqueeze(2).unsqueeze(3)  # (K, S, 1, 1)
        n, m = x.shape[1], y.shape[1]
        if x.shape[0] * scale.shape[1] * max(n, m) ** 2 > BLOCK_ELEMENTS:
            kxx = _blocked_kernel_sum(x, x, scale, self_pairs=True)
            kyy = _blocked_kernel_sum(y, y, scale, self_pairs=True)
            kxy = _blocked_kernel_sum(x, y, scale, self_pairs=False) / (n * m)
        else:
            kxx = _kernel_sum(_batched_self_sq_dists(x), scale)
            kyy = _kernel_sum(_batched_self_sq_dists(y), scale)
            kxy = _kernel_sum(batched_sq_dists(x, y), scale) / (n * m)
        if estimator == "biased":
            return kxx / (n * n) + kyy / (m * m) - 2.0 * kxy
        diag = float(bandwidths.shape[1])  # k(a, a) = number of bandwidths (distance 0 masked exactly)
        return (kxx - n * diag) / (n * (n - 1)) + (kyy - m * diag) / (m * (m - 1)) - 2.0 * kxy
