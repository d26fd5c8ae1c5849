"""CPU time of one Embedding-Loss forward+backward with each family's inits grouped into one network against
the same embedders run one by one (EmbeddingLoss(grouped=False)); both give the same numbers (tests/embedding).

    OMP_NUM_THREADS=1 python benchmarks/el_grouped.py                    # the miniature: B=32, 1x16x16, K=4x4
    OMP_NUM_THREADS=1 python benchmarks/el_grouped.py --batch 64 --channels 3 --resolution 32 --working-size 32

The two variants alternate, --rounds times --passes passes each after a warm-up, so a busy machine slows both
alike; the numbers are process CPU time (fair on a shared machine), min and median over rounds, per pass.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from eldistill.embedding import EmbeddingLoss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--working-size", type=int, default=16)
    parser.add_argument("--inits-per-arch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.channels, args.resolution, args.resolution)
    x_gen, x_real = torch.rand(shape, generator=g) * 2 - 1, torch.rand(shape, generator=g) * 2 - 1
    losses = {
        name: EmbeddingLoss(inits_per_arch=args.inits_per_arch, in_channels=args.channels,
                            working_size=args.working_size, grouped=grouped)
        for name, grouped in (("grouped", True), ("separate", False))
    }  # fmt: skip

    def one_pass(el) -> None:
        x = x_gen.clone().requires_grad_()
        el(x, x_real)[0].backward()

    times = {name: [] for name in losses}
    for el in losses.values():
        one_pass(el)  # warm-up
    for _ in range(args.rounds):
        for name, el in losses.items():
            start = time.process_time()
            for _ in range(args.passes):
                one_pass(el)
            times[name].append(1000 * (time.process_time() - start) / args.passes)
    result = {"batch": args.batch, "shape": list(shape[1:]), "working_size": args.working_size,
              "K": len(losses["grouped"].names), "threads": torch.get_num_threads()}  # fmt: skip
    for name, values in times.items():
        result[f"{name}_cpu_ms_min"] = round(min(values), 1)
        result[f"{name}_cpu_ms_median"] = round(statistics.median(values), 1)
    result["speedup_median"] = round(result["separate_cpu_ms_median"] / result["grouped_cpu_ms_median"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
