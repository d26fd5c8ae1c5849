"""Shared fixtures. Tests run on the CPU with one thread per process: CI has two cores."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SLURM_SCRIPTS = REPO / "slurm" / "local"

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real single-node SLURM (slurmctld + slurmd + munge) on localhost, started for the test session
    and stopped afterwards by the process ids in its pid files. Skips when the machine cannot run it
    (not root, or no apt-get to install the Debian packages)."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("a local SLURM needs root and Debian's apt-get")
    already_up = subprocess.run(["bash", "-c", "sinfo -h >/dev/null 2>&1"]).returncode == 0
    env = dict(os.environ, FAKE_GPUS=os.environ.get("FAKE_GPUS", "1"))
    subprocess.run(["bash", str(SLURM_SCRIPTS / "start_slurm.sh")], check=True, env=env, timeout=600)
    yield {"partition": "debug", "gpus_per_node": int(env["FAKE_GPUS"])}
    if not already_up:  # leave a cluster the user started alone
        subprocess.run(["bash", str(SLURM_SCRIPTS / "stop_slurm.sh"), "--purge"], timeout=120)
