"""What the workflow tests share: a Snakemake runner and the names of the paper's datasets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
PAPER_DATA = ("cifar10-32x32.zip", "ffhq-64x64.zip", "afhqv2-64x64.zip", "imagenet-64x64.zip", "img512-sd.zip")


def _command(args: list[str], timeout: int) -> tuple[list[str], dict[str, str]]:
    """The command line (Snakemake on the repository's Snakefile, killed with SIGKILL after `timeout` seconds)
    and its environment."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return ["timeout", "-s", "KILL", str(timeout), *SNAKEMAKE, "-s", str(REPO / "Snakefile"), *args], env


def snakemake(args: list[str], cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run Snakemake on the repository's Snakefile; killed (SIGKILL) after `timeout` seconds."""
    cmd, env = _command(args, timeout)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


def start_snakemake(args: list[str], output: Path, cwd: Path = REPO, timeout: int = 300) -> subprocess.Popen:
    """Start Snakemake as `snakemake` runs it, in the background and in a process group of its own (so that
    `os.killpg(process.pid, signal.SIGKILL)` ends the controller and its children at once, as a crash would);
    stdout and stderr go to the file `output`."""
    cmd, env = _command(args, timeout)
    with open(output, "w") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
