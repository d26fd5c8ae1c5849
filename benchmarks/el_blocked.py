"""CPU time and peak memory of one embedder family's EL above mmd.BLOCK_ELEMENTS (batches above 1024).

    OMP_NUM_THREADS=1 python benchmarks/el_blocked.py 8192 4 1024     # B (per side), K embedders, feature dim D
    OMP_NUM_THREADS=1 python benchmarks/el_blocked.py 4096 1 1024

Times, for random features x (K, B, D) requiring grad and y (K, B, D), the three steps family_mmd2 runs:
the median bandwidth (batched_median_distance), the forward of batched_mmd2_unchecked with bandwidths
[0.5, 1, 2, 4] x median, and its backward. Process CPU time (fair on a shared machine), one run each.
Prints one JSON line; peak_rss_mb is the process's peak, inputs_rss_mb the RSS once the inputs exist.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from eldistill.embedding.mmd import BLOCK_ELEMENTS, batched_median_distance, batched_mmd2_unchecked


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("batch", type=int)
    parser.add_argument("k", type=int)
    parser.add_argument("dim", type=int)
    parser.add_argument("--estimator", default="unbiased", choices=("unbiased", "biased"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.k, args.batch, args.dim, generator=g).requires_grad_(True)
    y = torch.randn(args.k, args.batch, args.dim, generator=g) + 0.1
    bandwidths = torch.tensor([0.5, 1.0, 2.0, 4.0]).expand(args.k, -1)
    inputs_rss = _rss_mb()
    seconds = {}

    start = time.process_time()
    median = batched_median_distance(x, y)
    seconds["median"] = time.process_time() - start

    start = time.process_time()
    value = batched_mmd2_unchecked(x, y, bandwidths * median.unsqueeze(1), args.estimator)
    seconds["forward"] = time.process_time() - start

    start = time.process_time()
    value.sum().backward()
    seconds["backward"] = time.process_time() - start

    blocked = args.k * 4 * args.batch**2 > BLOCK_ELEMENTS
    print(
        json.dumps(
            {
                "B": args.batch,
                "K": args.k,
                "D": args.dim,
                "threads": args.threads,
                "blocked_path": blocked,
                "cpu_s": {name: round(s, 2) for name, s in seconds.items()},
                "cpu_s_total": round(sum(seconds.values()), 2),
                "median": [round(v, 6) for v in median.tolist()],
                "mmd2": [float(f"{v:.8g}") for v in value.tolist()],
                "grad_norm": float(f"{x.grad.norm().item():.8g}"),
                "inputs_rss_mb": round(inputs_rss),
                "peak_rss_mb": round(_rss_mb()),
            }
        )
    )


if __name__ == "__main__":
    main()
