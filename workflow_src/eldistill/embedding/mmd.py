"""Squared Maximum Mean Discrepancy with a multi-scale RBF kernel.

    k(a, b) = sum over bandwidths s of exp(-||a - b||^2 / (2 s^2))
    MMD^2(P, Q) = E k(x, x') - 2 E k(x, y) + E k(y, y')

Distances come from ||a||^2 + ||b||^2 - 2 a.b (memory O(n*m), never an (n, m, d) tensor), clamped at 0
so float32 round-off cannot make them negative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.autograd.function import once_differentiable

ESTIMATORS = ("unbiased", "biased")
# Above this many kernel entries (K x bandwidths x n x m, or K x N^2 pooled distances for the median) one family
# is computed tile by tile (see the end of this file): the global EL of a batch-8192 cell (eldistill.global_el) would
# otherwise hold 4 x 4 x 8192^2 floats (4.3 GB) per kernel matrix, and as much again for the backward, which no CPU
# job (nor many GPUs) has. The tiles are faster on the CPU too: one family of 4 embedders at batch 2048 (768-d
# features, median + forward + backward) takes 2.5 s and 0.66 GB tiled against 7.0 s and 1.65 GB in one shot
# (benchmarks/el_blocked.py, one thread). At or below the threshold (every batch up to 1024 with 4 embedders and 4
# bandwidths: the miniature's batches) the one-shot path runs, bit for bit as before.
BLOCK_ELEMENTS = 2**24


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


def batched_median_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(K,) median_distance of each of the K pooled sets [x_k; y_k], without gradient."""
    with torch.no_grad():
        z = torch.cat([x, y], 1).detach()
        k, n = z.shape[0], z.shape[1]
        if k * n * n > BLOCK_ELEMENTS:  # one pooled set at a time, tile by tile; the same lower median
            with torch.autocast(device_type=z.device.type, enabled=False):  # counts bit patterns of z's dtype
                med = torch.stack([_tiled_lower_median(z[i]) for i in range(k)]).sqrt()
            return torch.where(med > 0, med, torch.ones_like(med))
        d2 = batched_sq_dists(z, z)
        i, j = torch.triu_indices(z.shape[1], z.shape[1], offset=1, device=z.device)
        med = d2[:, i, j].median(dim=1).values.sqrt()  # the lower median, as torch.median of one set
        return torch.where(med > 0, med, torch.ones_like(med))


def _kernel_sum(d2: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Sum over pairs and bandwidths of the RBF kernel, (K,), from squared distances d2 (K, n, m)."""
    return torch.exp(d2.unsqueeze(1) * scale).sum((1, 2, 3))


def batched_mmd2_unchecked(x: torch.Tensor, y: torch.Tensor, bandwidths: torch.Tensor, estimator: str) -> torch.Tensor:
    """(K,) MMD^2 of each pair (x_k, y_k); x (K, n, d), y (K, m, d), bandwidths (K, S) (one row per k)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        n, m = x.shape[1], y.shape[1]
        if x.shape[0] * bandwidths.shape[1] * max(n, m) ** 2 > BLOCK_ELEMENTS:
            return _tiled_mmd2(x, y, -0.5 / bandwidths.pow(2), estimator)
        scale = (-0.5 / bandwidths.pow(2)).unsqueeze(2).unsqueeze(3)  # (K, S, 1, 1)
        kxx = _kernel_sum(_batched_self_sq_dists(x), scale)
        kyy = _kernel_sum(_batched_self_sq_dists(y), scale)
        kxy = _kernel_sum(batched_sq_dists(x, y), scale) / (n * m)
        if estimator == "biased":
            return kxx / (n * n) + kyy / (m * m) - 2.0 * kxy
        diag = float(bandwidths.shape[1])  # k(a, a) = number of bandwidths (distance 0 masked exactly)
        return (kxx - n * diag) / (n * (n - 1)) + (kyy - m * diag) / (m * (m - 1)) - 2.0 * kxy


# --- One family above BLOCK_ELEMENTS (batches above 1024: the 2048 and 8192 cells), tile by tile ----------------------
# Squared distances are made TILE x TILE at a time by one matmul and used while the tile is in cache. The MMD's
# gradient is accumulated in that same pass (no autograd graph of tiles, nothing recomputed in the backward), a
# self-distance matrix is walked over its tiles j >= i only (it is symmetric), and the median is selected by
# counting over the tiles instead of gathering all pairs: memory O(K n d + TILE^2), about one matmul per pair.
TILE = 512  # CPU: a (512, 512) float32 tile is 1 MB, so the few buffers of a tile stay in a core's L2/L3 cache
ACCELERATOR_TILE = 4096  # GPU: few large kernels (64 MB a float32 tile), as each tile costs launches and a sync
MEDIAN_SAMPLE_BLOCK = 128  # the median's window is guessed from N / 2 x 128 pairs (1M at N = 16384)
MEDIAN_WINDOW = 0.01  # half-width of that window, as a fraction of all pairs (the sample errs by ~0.001)
MEDIAN_WINDOW_CAP = 2**25  # most distances the window may collect (128 MB in float32); beyond: exact counting
_SAME_SIZE_INT = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
                  torch.bfloat16: torch.int16}  # fmt: skip


def _tile(device: torch.device) -> int:
    return TILE if device.type == "cpu" else ACCELERATOR_TILE


def _sq_dist_tile(a: torch.Tensor, a_sq: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """(c, t) squared distances between rows a (c, d) and b (t, d), given their squared norms, clamped at 0; the
    operations of batched_sq_dists in its order, so that both round alike."""
    return (a_sq.unsqueeze(1) + b_sq.unsqueeze(0)).sub_(a @ b.T, alpha=2.0).clamp_min_(0.0)


def _upper_tiles(z: torch.Tensor, z_sq: torch.Tensor):
    """The squared distances of the pairs i < j of the rows of z (N, d), a tile at a time (any layout)."""
    n, tile = z.shape[0], _tile(z.device)
    for a in range(0, n, tile):
        rows, rows_sq = z[a : a + tile], z_sq[a : a + tile]
        for b in range(a, n, tile):
            d2 = _sq_dist_tile(rows, rows_sq, z[b : b + tile], z_sq[b : b + tile])
            yield d2[torch.ones_like(d2, dtype=torch.bool).triu_(1)] if b == a else d2


def _median_window(z: torch.Tensor, z_sq: torch.Tensor, rank: int, pairs: int) -> tuple[float, float]:
    """[lo, hi] very likely to hold the pair distance of this rank, and about 2 * MEDIAN_WINDOW of all pairs:
    quantiles of a sample of pairs, the rows in a fixed random order cut into blocks paired two by two. Every
    row is in the sample, so its quantiles err little even where rows differ much (a few rows against all would
    not: their own spread of distances would dominate)."""
    n = z.shape[0]
    size = min(MEDIAN_SAMPLE_BLOCK, n // 2)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))[: n // (2 * size) * 2 * size]
    sample = torch.cat(
        [_sq_dist_tile(z[i], z_sq[i], z[j], z_sq[j]).reshape(-1) for i, j in order.to(z.device).view(-1, 2, size)]
    )
    half = min(MEDIAN_WINDOW, MEDIAN_WINDOW_CAP / (4 * pairs))  # expected count at most half the cap
    lo = math.floor((rank / pairs - half) * sample.numel())
    hi = math.ceil((rank / pairs + half) * sample.numel())
    return (
        sample.kthvalue(lo + 1).values.item() if lo >= 0 else -math.inf,
        sample.kthvalue(hi + 1).values.item() if hi < sample.numel() else math.inf,
    )


def _count_window(z: torch.Tensor, z_sq: torch.Tensor, lo: float, hi: float) -> tuple[int, torch.Tensor | None]:
    """(how many pair distances are below lo, those in [lo, hi] or None if more than MEDIAN_WINDOW_CAP)."""
    below, parts, kept = 0, [], 0
    for d2 in _upper_tiles(z, z_sq):
        at_least_lo = d2 >= lo
        below += d2.numel() - int(at_least_lo.count_nonzero())
        if kept <= MEDIAN_WINDOW_CAP:
            parts.append(d2[at_least_lo.logical_and_(d2 <= hi)])
            kept += parts[-1].numel()
    return below, (torch.cat(parts) if kept <= MEDIAN_WINDOW_CAP else None)


def _radix_select(z: torch.Tensor, z_sq: torch.Tensor, rank: int) -> torch.Tensor:
    """The pair distance of this 0-based rank, exactly, found 16 bits at a time from the top of its bit pattern
    (floats >= 0 order as their bits do): one counting pass per 16 bits, memory O(2^16)."""
    itype = _SAME_SIZE_INT[z.dtype]
    width = torch.iinfo(itype).bits
    prefix = 0  # the bits of the answer above `shift + 16` found so far
    for shift in range(width - 16, -1, -16):
        counts = torch.zeros(1 << 16, dtype=torch.int64, device=z.device)
        for d2 in _upper_tiles(z, z_sq):
            bits = d2.reshape(-1).view(itype).clamp_min(0).long()  # clamp: -0.0 counts as +0.0
            if shift + 16 < width:
                bits = bits[(bits >> (shift + 16)) == prefix]
            counts += torch.bincount((bits >> shift) & 0xFFFF, minlength=1 << 16)
        cumulative = counts.cumsum(0)
        digit = int(torch.searchsorted(cumulative, torch.tensor(rank, device=z.device), right=True))
        rank -= int(cumulative[digit - 1]) if digit else 0
        prefix = (prefix << 16) | digit
    return torch.tensor(prefix, dtype=itype, device=z.device).view(z.dtype)


def _tiled_lower_median(z: torch.Tensor) -> torch.Tensor:
    """torch.median (the lower median) of the squared distances of the pairs i < j of the rows of z (N, d), exactly:
    one pass that counts the pairs below a guessed window and collects those inside, then a selection inside it;
    if the window missed, exact counting over the bit patterns. NaN if z holds NaN or inf, as torch.median."""
    if not bool(torch.isfinite(z).all()):
        return z.new_tensor(math.nan)
    pairs = z.shape[0] * (z.shape[0] - 1) // 2
    rank = (pairs - 1) // 2
    z_sq = z.pow(2).sum(1)
    lo, hi = _median_window(z, z_sq, rank, pairs)
    below, window = _count_window(z, z_sq, lo, hi)
    if window is not None and below <= rank < below + window.numel():
        return window.kthvalue(rank - below + 1).values
    return _radix_select(z, z_sq, rank)


class _RowGradient:
    """The gradient with respect to the rows u_i of one point set of a sum of f(|u_i - v_j|^2) terms:
    sum_j c_ij (u_i - v_j) = (row sums of c) u_i - (c v)_i, accumulated tile by tile."""

    def __init__(self, u: torch.Tensor):
        self.u, self.row_sums, self.pulled = u, u.new_zeros(u.shape[0]), torch.zeros_like(u)

    def add(self, rows: slice, c: torch.Tensor, v: torch.Tensor, alpha: float) -> None:
        self.row_sums[rows].add_(c.sum(1), alpha=alpha)
        self.pulled[rows].addmm_(c, v, alpha=alpha)

    def result(self) -> torch.Tensor:
        return self.row_sums.unsqueeze(1) * self.u - self.pulled


def _tiled_kernel_sum(
    u: torch.Tensor,
    u_sq: torch.Tensor,
    v: torch.Tensor,
    v_sq: torch.Tensor,
    scales: list[float],
    weight: float,
    grads: tuple[_RowGradient | None, _RowGradient | None, torch.Tensor | None],
) -> torch.Tensor:
    """The sum over all entries and bandwidths of the kernel matrix of u (n, d) against v (m, d), v is u for a
    self matrix (its diagonal at distance 0 exactly), as a float64 scalar. Adds `weight` times its gradient to
    grads = (rows of u, rows of v, the S scales), those not None. k = exp(scale * d2), so dk/dd2 = scale * k."""
    same = u is v
    grad_u, grad_v, grad_scale = grads
    total = torch.zeros((), dtype=torch.float64, device=u.device)
    tile = _tile(u.device)
    for a in range(0, u.shape[0], tile):
        rows = slice(a, a + tile)
        for b in range(a if same else 0, v.shape[0], tile):
            cols = slice(b, b + tile)
            d2 = _sq_dist_tile(u[rows], u_sq[rows], v[cols], v_sq[cols])
            diagonal = same and a == b
            if diagonal:
                d2.fill_diagonal_(0.0)
            copies = 2 if same and not diagonal else 1  # a tile j > i of a self matrix stands for its mirror too
            e, c = torch.empty_like(d2), None
            for q, s in enumerate(scales):
                torch.mul(d2, s, out=e).exp_()
                total.add_(e.sum(), alpha=copies)
                if grad_scale is not None:
                    grad_scale[q] += weight * copies * torch.dot(d2.reshape(-1), e.reshape(-1))
                if grad_u is not None or grad_v is not None:  # c = dk/dd2, over the bandwidths
                    c = e * s if c is None else c.add_(e, alpha=s)
            if c is None:
                continue
            if diagonal:
                c.fill_diagonal_(0.0)  # its terms are c_ii (u_i - u_i) = 0; keep their round-off out
            # dd2_ij/du_i = 2 (u_i - v_j); in a self matrix u_i is also the column of the mirrored entry (j, i)
            alpha = 2.0 * weight * (2 if same else 1)
            if grad_u is not None:
                grad_u.add(rows, c, v[cols], alpha)
            if grad_v is not None and not diagonal:
                grad_v.add(cols, c.T, u[rows], alpha)
    return total


def _tiled_mmd2_and_grads(
    x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, estimator: str, needs: tuple[bool, bool, bool]
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """(K,) MMD^2 of x (K, n, d) against y (K, m, d) with kernel scales (K, S) = -1 / (2 bandwidth^2), and its
    gradients with respect to x, y and scale (None where `needs` says no), computed in their promoted dtype."""
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), scale.dtype)
    x, y, scale = (t.detach().to(dtype) for t in (x, y, scale))
    n, m, s = x.shape[1], y.shape[1], scale.shape[1]
    if estimator == "biased":
        w_xx, w_yy, offset = 1.0 / (n * n), 1.0 / (m * m), 0.0
    else:  # the diagonal pairs (k(a, a) = s) are summed with their tiles, then taken out
        w_xx, w_yy = 1.0 / (n * (n - 1)), 1.0 / (m * (m - 1))
        offset = -s * (n * w_xx + m * w_yy)
    w_xy = -2.0 / (n * m)
    grads = [torch.zeros_like(t) if need else None for t, need in zip((x, y, scale), needs, strict=True)]
    values = []
    for k, scales in enumerate(scale.tolist()):
        xk, yk = x[k], y[k]
        x_sq, y_sq = xk.pow(2).sum(1), yk.pow(2).sum(1)
        gx = _RowGradient(xk) if needs[0] else None
        gy = _RowGradient(yk) if needs[1] else None
        gs = torch.zeros(s, dtype=torch.float64, device=x.device) if needs[2] else None
        kxx = _tiled_kernel_sum(xk, x_sq, xk, x_sq, scales, w_xx, (gx, gx, gs))
        kyy = _tiled_kernel_sum(yk, y_sq, yk, y_sq, scales, w_yy, (gy, gy, gs))
        kxy = _tiled_kernel_sum(xk, x_sq, yk, y_sq, scales, w_xy, (gx, gy, gs))
        values.append(w_xx * kxx + w_yy * kyy + w_xy * kxy + offset)
        for grad, part in zip(grads, (gx, gy, gs), strict=True):
            if grad is not None:
                grad[k] = part if isinstance(part, torch.Tensor) else part.result()
    return torch.stack(values).to(dtype), grads


class _TiledMMD2(torch.autograd.Function):
    """The tiled MMD^2, whose gradient is computed with its value (kept: K x (n + m) x d numbers at most)."""

    @staticmethod
    def forward(ctx, x, y, scale, estimator, needs):
        value, grads = _tiled_mmd2_and_grads(x, y, scale, estimator, needs)
        ctx.save_for_backward(*grads)
        ctx.dtypes = (x.dtype, y.dtype, scale.dtype)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_value):
        per_k = [g if g is None else g * grad_value.view(-1, *[1] * (g.dim() - 1)) for g in ctx.saved_tensors]
        return *(g if g is None else g.to(dtype) for g, dtype in zip(per_k, ctx.dtypes, strict=True)), None, None


def _tiled_mmd2(x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, estimator: str) -> torch.Tensor:
    """(K,) MMD^2 tile by tile; its gradient is computed along only for the inputs autograd asks for."""
    needs = tuple(torch.is_grad_enabled() and t.requires_grad for t in (x, y, scale))
    if any(needs):
        return _TiledMMD2.apply(x, y, scale, estimator, needs)
    return _tiled_mmd2_and_grads(x, y, scale, estimator, needs)[0]
