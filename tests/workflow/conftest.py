"""What the workflow tests share: a Snakemake runner and the names of the paper's datasets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
PAPER_DATA = ("cifar10-32x32.zip", "ffhq-64x64.zip", "afhqv2-64x64.zip", "imagenet-64x64.zip", "img512-sd.zip")


def snakemake(args: list[str], cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run Snakemake on the repository's Snakefile; killed (SIGKILL) after `timeout` seconds."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = ["timeout", "-s", "KILL", str(timeout), *SNAKEMAKE, "-s", str(REPO / "Snakefile"), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
