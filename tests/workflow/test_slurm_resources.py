"""What sbatch really receives for a GPU cell, on the local SLURM (one node, 2 CPUs, one fake GPU): the GPUs and
the time the plan asks for, and the profile's CPUs per GPU (not the default cpus_per_task that used to win)."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from eldistill.grid import build_grid, load_config

from .conftest import REPO, snakemake

CI = REPO / "config" / "ci.yaml"


def run_one_gpu_cell(tmp_path, max_runtime_min: int, distill_resources: dict, **profile_settings):
    """Snakemake, with the local profile plus what a site sets for GPU rules (`distill_resources` for the distill
    rule; default-resources keeps its cpus_per_task: 1), asks for one cell of the ci config planned as a GPU
    cluster: 1 GPU per node, a `max_runtime_min` site limit, a teacher counted as 56 M parameters (a GPU cell; it
    still trains on the CPU here, the fake GPU has no device) trained for 2 iterations (seconds).
    Returns the cell's plan, the work folder and snakemake's result."""
    overlay = tmp_path / "gpu.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "hardware": {"gpus_per_node": 1, "max_runtime_min": max_runtime_min},
                "teachers": {"digits-uncond": {"params": 56_000_000, "train": {"total_images": 64}}},
                "only_experiments": ["frameworks"],
            }
        )
    )
    profile = tmp_path / "profile"
    profile.mkdir()
    config = yaml.safe_load((REPO / "slurm" / "local" / "config.yaml").read_text())
    config.update(profile_settings)
    config["set-resources"] = {"distill": distill_resources}
    config.pop("configfile", None)
    (profile / "config.yaml").write_text(yaml.safe_dump(config))
    g = build_grid(load_config([CI, overlay]))
    cell_id = g.rows[0]["cell_id"]
    work = tmp_path / "work"
    target = f"results/ci/runs/{cell_id}/generator.pt"
    args = ["--profile", str(profile), target, "--configfile", str(CI), str(overlay), "--directory", str(work)]
    return g.plans[cell_id], work, snakemake(args, timeout=900)


@pytest.mark.slurm
@pytest.mark.slow
def test_sbatch_gets_the_gpus_cpus_and_time_of_the_plan(slurm_cluster, tmp_path):
    if slurm_cluster["gpus_per_node"] < 1:
        pytest.skip("the local SLURM runs without a fake GPU")
    resources = {"cpus_per_gpu": 2, "mem_mb": 1000}  # the node has 2 CPUs, little memory
    want, work, result = run_one_gpu_cell(tmp_path, 45, resources)
    assert (want["gpus"], want["segments"]) == (1, 1) and want["runtime_min"] <= 45
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    logs = list((work / "results" / "logs" / "slurm" / "rule_distill").rglob("*.log"))
    assert len(logs) == 1, logs
    job_id = logs[0].stem
    job = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", job))
    assert fields["NumCPUs"] == "2", job  # --cpus-per-gpu=2 x 1 GPU, not the default cpus_per_task 1
    assert fields["TresPerJob"] in ("gres:gpu:1", "gres/gpu:1"), job  # --gpus=1
    assert fields["CpusPerTres"] in ("gres:gpu:2", "gres/gpu:2"), job  # --cpus-per-gpu=2
    hours, minutes = divmod(want["runtime_min"], 60)
    assert fields["TimeLimit"] == f"{hours:02d}:{minutes:02d}:00", job


@pytest.mark.slurm
@pytest.mark.slow
def test_a_retry_asks_more_time_but_never_more_than_the_limit(slurm_cluster, tmp_path):
    """The distill job is refused by sbatch on every attempt (it asks for more memory than the node has), so the
    controller's log shows each attempt's sbatch line: 11 min, then min(limit 15, 2 x 11) = 15, not 22."""
    if slurm_cluster["gpus_per_node"] < 1:
        pytest.skip("the local SLURM runs without a fake GPU")
    resources = {"cpus_per_gpu": 2, "mem_mb": 10**8}  # 100 TB: refused at once
    want, work, result = run_one_gpu_cell(tmp_path, 15, resources, retries=2, **{"keep-going": True})
    assert want["runtime_min"] == 11
    assert result.returncode != 0
    log = "".join(p.read_text() for p in (work / ".snakemake" / "log").glob("*.log"))
    calls = [line for line in log.splitlines() if line.strip().startswith("sbatch ") and "rule_distill" in line]
    assert [re.search(r" -t (\d+) ", c).group(1) for c in calls] == ["11", "15", "15"], calls
