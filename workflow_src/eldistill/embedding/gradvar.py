"""Gradient-variance probe: how the variance of the EL gradient falls with the number of embedders K and
the batch B (the paper's O(1/K) and O(1/B) claims), on a pair of synthetic image distributions.

The toy. Real images: x = tanh(m + 0.8 n), with m a fixed smooth pattern and n smooth Gaussian noise
(an 8x8 Gaussian field upsampled bilinearly). The pattern is faint (the two distributions are near, as
when EL supplements a distiller), so mini-batch noise is not swamped by the embedder-to-embedder spread.
Generator: x = tanh(theta + 0.5 n) with theta = 0, a (C, R, R) offset whose EL gradient we measure.
One draw = B fresh real images, B fresh generated images and K embedders whose families and seeds are
drawn at random, i.e. an independent sample of the stochastic EL gradient.
The variance of a cell (K, B) is the mean over the C*R*R coordinates of the
unbiased variance across `repeats` draws (the trace of the covariance divided by the dimension).

The EL gradient with K embedders is the mean of K per-embedder gradients, so each (B, draw) computes
max(ks) per-embedder gradients once and every K reads the mean of the first K of them.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..io import atomic_write_bytes
from .embedders import FAMILIES, build_embedder
from .loss import embedder_mmd2


def smooth_noise(b: int, channels: int, resolution: int, gen: torch.Generator) -> torch.Tensor:
    """Smooth Gaussian fields: 8x8 white noise upsampled bilinearly to the resolution."""
    coarse = torch.randn(b, channels, 8, 8, generator=gen)
    return F.interpolate(coarse, size=(resolution, resolution), mode="bilinear", align_corners=False) * 1.5


def real_pattern(channels: int, resolution: int) -> torch.Tensor:
    """The real distribution's mean: a diagonal ramp plus a soft blob, differing per channel."""
    t = torch.linspace(-1, 1, resolution)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    chans = [0.15 * (xx + yy) / 2 * (-1) ** c + 0.2 * torch.exp(-(xx**2 + yy**2) * (2 + c)) for c in range(channels)]
    return torch.stack(chans)


def _draw_embedders(k: int, families: Sequence[str], channels: int, resolution: int, gen, device="cpu") -> list:
    """k embedders with families and seeds drawn at random from `gen` (i.i.d. draws from the zoo)."""
    out = []
    for _ in range(k):
        family = families[int(torch.randint(len(families), (1,), generator=gen))]
        seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
        out.append(build_embedder(family, seed, channels, resolution).to(device))
    return out


def _parse_ints(text: str | Sequence[int], key: str) -> list[int]:
    try:
        values = [int(v) for v in (text.split(",") if isinstance(text, str) else text) if str(v).strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{key} must be a comma-separated list of positive integers, got {text!r}")
    return sorted(set(values))


def fit_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    if len(x) < 2:
        return float("nan")
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def gradient_variance(
    ks: Sequence[int] = (1, 2, 4, 8, 16),
    batches: Sequence[int] = (16, 32, 64, 128, 256),
    repeats: int = 16,
    resolution: int = 16,
    channels: int = 3,
    seed: int = 0,
    families: Sequence[str] = FAMILIES,
    bandwidths: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
    bandwidth_mode: str = "median",
    estimator: str = "unbiased",
    fixed_embedders: bool = False,
    device: str = "cpu",
) -> pd.DataFrame:
    """One row per (K, B): the EL-gradient variance and the settings that produced it.

    fixed_embedders=False (default) draws new embedders for every draw: the variance over embedders and
    batches, the quantity of the O(1/K) + O(1/B) claim. True draws them once from `seed` and varies only
    the batches: the mini-batch variance for one fixed ensemble. Random draws come from CPU generators,
    so the toy is the same on every device."""
    ks, batches = _parse_ints(ks, "ks"), _parse_ints(batches, "batches")
    if repeats < 2:
        raise ValueError(f"repeats must be at least 2 to estimate a variance, got {repeats}")
    if resolution < 8:
        raise ValueError(f"resolution must be at least 8, got {resolution}")
    if estimator == "unbiased" and min(batches) < 2:
        raise ValueError(f"batches must be at least 2 with the unbiased estimator, got {min(batches)}")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ValueError(f"families has {unknown or 'none'}; choose from {', '.join(FAMILIES)}")
    kmax, dim = max(ks), channels * resolution * resolution
    pattern = real_pattern(channels, resolution)
    fixed = _draw_embedders(kmax, families, channels, resolution, torch.Generator().manual_seed(seed), device)
    rows = []
    bar = tqdm(total=len(batches) * repeats, desc="gradvar", unit="draw")
    for b in batches:
        grads = {k: [] for k in ks}
        for r in range(repeats):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + b * 1009 + r)
            x_real = torch.tanh(pattern + 0.8 * smooth_noise(b, channels, resolution, gen)).to(device)
            theta = torch.zeros(channels, resolution, resolution, device=device, requires_grad=True)
            x_gen = torch.tanh(theta + 0.5 * smooth_noise(b, channels, resolution, gen).to(device))
            embedders = fixed
            if not fixed_embedders:
                embedders = _draw_embedders(kmax, families, channels, resolution, gen, device)
            per = []
            for emb in embedders:
                value = embedder_mmd2(emb, x_gen, x_real, bandwidths, bandwidth_mode, estimator)
                per.append(torch.autograd.grad(value, theta, retain_graph=True)[0].flatten())
            per = torch.stack(per).double().cpu()
            for k in ks:
                grads[k].append(per[:k].mean(0))
            bar.update()
        for k in ks:
            g = torch.stack(grads[k])
            rows.append(
                {
                    "K": k,
                    "B": b,
                    "variance": g.var(0, unbiased=True).mean().item(),
                    "mean_grad_sq": g.mean(0).pow(2).mean().item(),
                    "relative_variance": g.var(0, unbiased=True).sum().item() / g.mean(0).pow(2).sum().item(),
                    "repeats": repeats,
                    "resolution": resolution,
                    "channels": channels,
                    "dim": dim,
                    "seed": seed,
                    "families": ",".join(families),
                    "bandwidths": ",".join(str(float(s)) for s in bandwidths),
                    "bandwidth_mode": bandwidth_mode,
                    "estimator": estimator,
                    "embedders": "fixed" if fixed_embedders else "resampled",
                    "parameter": "generator offset theta (C x R x R)",
                }
            )
    bar.close()
    return pd.DataFrame(rows).sort_values(["K", "B"]).reset_index(drop=True)


def slopes(df: pd.DataFrame) -> dict[str, float]:
    """Fitted log-log slopes: jointly (log var = c + a log K + b log B) and along each edge of the grid
    where the other source of noise is smallest (K at the largest B, B at the largest K)."""
    out = {}
    if df["K"].nunique() > 1 and df["B"].nunique() > 1:
        design = np.column_stack([np.ones(len(df)), np.log(df["K"]), np.log(df["B"])])
        coef = np.linalg.lstsq(design, np.log(df["variance"]), rcond=None)[0]
        out["joint_K"], out["joint_B"] = float(coef[1]), float(coef[2])
    at_b = df[df["B"] == df["B"].max()]
    at_k = df[df["K"] == df["K"].max()]
    out["K_at_max_B"] = fit_slope(at_b["K"], at_b["variance"])
    out["B_at_max_K"] = fit_slope(at_k["B"], at_k["variance"])
    return out


def additive_fit(df: pd.DataFrame) -> dict[str, float]:
    """Non-negative least squares of variance = a/K + b/B + d/(K B) + c: the paper's O(1/K) + O(1/B)
    terms, plus the batch noise that each embedder sees independently (d) and a floor (c)."""
    from scipy.optimize import nnls

    design = np.column_stack([1.0 / df["K"], 1.0 / df["B"], 1.0 / (df["K"] * df["B"]), np.ones(len(df))])
    coef, _ = nnls(design, df["variance"].to_numpy(float))
    pred = design @ coef
    resid = df["variance"].to_numpy(float) - pred
    r2 = 1.0 - float(resid @ resid) / float(((df["variance"] - df["variance"].mean()) ** 2).sum())
    names = ("a_over_K", "b_over_B", "d_over_KB", "c")
    return {**{n: float(v) for n, v in zip(names, coef)}, "r2": r2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="CSV to write (one row per (K, B))")
    parser.add_argument("--ks", default="1,2,4,8,16", help="numbers of embedders K, comma-separated")
    parser.add_argument("--batches", default="16,32,64,128,256", help="batch sizes B, comma-separated")
    parser.add_argument("--repeats", type=int, default=16, help="independent draws per cell")
    parser.add_argument("--resolution", type=int, default=16, help="image resolution of the toy (>= 8)")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3, 4))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fixed-embedders",
        action="store_true",
        help="draw the embedders once and vary only the batches (default: new embedders every draw)",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")


def run(args: argparse.Namespace) -> int:
    df = gradient_variance(
        ks=args.ks,
        batches=args.batches,
        repeats=args.repeats,
        resolution=args.resolution,
        channels=args.channels,
        seed=args.seed,
        fixed_embedders=args.fixed_embedders,
        device=("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device,
    )
    atomic_write_bytes(df.to_csv(index=False).encode(), Path(args.out))
    print(df[["K", "B", "variance", "mean_grad_sq", "relative_variance"]].to_string(index=False))
    for name, value in slopes(df).items():
        print(f"log-log slope {name}: {value:+.3f}" + ("" if math.isfinite(value) else " (needs two values)"))
    print("(O(1/K) and O(1/B) mean slopes near -1 where that source of noise dominates; shallower elsewhere)")
    if len(df) >= 3:
        fit = additive_fit(df)
        print(
            f"fit variance = a/K + b/B + d/(KB) + c: a={fit['a_over_K']:.3g} b={fit['b_over_B']:.3g} "
            f"d={fit['d_over_KB']:.3g} c={fit['c']:.3g} (R^2 {fit['r2']:.3f})"
        )
    print(f"wrote {args.out}")
    return 0
