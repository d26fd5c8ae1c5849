"""What every SLURM job of the workflow pays before it does any work, piece by piece.

A job submitted by snakemake-executor-plugin-slurm starts Snakemake twice (the job step, then `srun` of Snakemake
again), and each start imports Snakemake and parses our Snakefile, whose main cost is `build_grid` on the config.
Then `eldistill` imports torch, and a training job's first `torch.optim` optimizer imports `torch._dynamo`.
Each piece runs in a fresh process (one thread); the table gives the median of `--repeats` runs:

    OMP_NUM_THREADS=1 python benchmarks/job_startup.py                 # paper.yaml + rehearsal.yaml
    OMP_NUM_THREADS=1 python benchmarks/job_startup.py --only grid     # one run of one piece (used by the table)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [REPO / "config" / "paper.yaml", REPO / "config" / "rehearsal.yaml"]

# piece -> (what it is, how many times one SLURM job pays it)
PIECES = {
    "snakemake": ("import snakemake.cli (with every installed executor plugin)", "2 per job"),
    "grid": ("load_config + build_grid (the Snakefile's own work)", "2 per job"),
    "torch": ("import torch", "1 per job"),
    "optimizer": ("first torch.optim.Adam (imports torch._dynamo)", "1 per training job"),
}


def _piece(name: str, configs: list[str]) -> float:
    """Seconds of one piece in this (fresh) process; what it needs first is imported before the clock starts."""
    if name == "grid":
        from eldistill.grid import build_grid, load_config

        start = time.perf_counter()
        build_grid(load_config(configs))
    elif name == "optimizer":
        import torch

        start = time.perf_counter()
        torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    elif name == "snakemake":
        start = time.perf_counter()
        import snakemake.cli  # noqa: F401
    else:
        start = time.perf_counter()
        import torch  # noqa: F401
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=[str(p) for p in CONFIGS])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=sorted(PIECES), help="time one piece in this process and print it")
    args = parser.parse_args()
    if args.only:
        print(json.dumps({"seconds": _piece(args.only, args.configs)}))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "workflow_src")}
    print(f"| piece | paid | median s (of {args.repeats} fresh processes) |\n|---|---|---|")
    for name, (what, paid) in PIECES.items():
        times = []
        for _ in range(args.repeats):
            cmd = [sys.executable, __file__, "--only", name, "--configs", *args.configs]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            times.append(json.loads(out.splitlines()[-1])["seconds"])
        print(f"| {what} | {paid} | {statistics.median(times):.3f} |")


if __name__ == "__main__":
    main()
