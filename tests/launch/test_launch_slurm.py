"""eldistill launch against the real local SLURM: one cell, an array, a preemption that resumes to the same
weights as an uninterrupted run, and refusals before submission."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import torch

from eldistill.io import read_jsonl
from eldistill.launch import launch, slurm_state, wait
from eldistill.train import train

pytestmark = pytest.mark.slurm


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # sbatch exports the environment to the job


def weights(run_dir) -> dict:
    return torch.load(Path(run_dir) / "generator.pt", weights_only=True)["state_dict"]


def events(cell) -> list[str]:
    return [r["event"] for r in read_jsonl(Path(cell.run_dir) / "requeues.jsonl")]


def test_launch_one_cell_and_read_its_result(slurm_cluster, make_cell, tmp_path):
    cell = make_cell("one")
    (job,) = launch([cell], partition=slurm_cluster["partition"], folder=tmp_path / "logs", cpus_per_task=1)
    (result,) = wait([job], [cell], poll_s=0.5, timeout_s=300)
    assert "error" not in result, result
    assert result["cell_id"] == cell.cell_id
    assert result["metrics"]["images_seen"] == cell.total_images
    run = Path(cell.run_dir)
    assert (run / "generator.pt").exists() and (run / "config.json").exists()
    assert read_jsonl(run / "metrics.jsonl")[-1]["images_seen"] == 16
    assert events(cell) == ["start", "finished"]


def test_two_cells_as_one_array(slurm_cluster, make_cell, tmp_path):
    cells = [make_cell("a", seed=1), make_cell("b", seed=2)]
    jobs = launch(cells, array=True, partition=slurm_cluster["partition"], folder=tmp_path / "logs", cpus_per_task=1)
    array_ids = {j.job_id.split("_")[0] for j in jobs}
    assert len(array_ids) == 1 and sorted(j.job_id.split("_")[1] for j in jobs) == ["0", "1"]
    results = wait(jobs, cells, poll_s=0.5, timeout_s=300)
    assert [r.get("cell_id") for r in results] == [c.cell_id for c in cells], results
    # two seeds, two different generators
    a, b = (weights(c.run_dir) for c in cells)
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("how", ["signal", "scontrol"])
def test_preempted_cell_requeues_resumes_and_matches_an_uninterrupted_run(how, slurm_cluster, make_cell, tmp_path):
    cell = make_cell("preempted", total_images=48)
    (job,) = launch([cell], partition=slurm_cluster["partition"], folder=tmp_path / "logs", cpus_per_task=1)
    metrics = Path(cell.run_dir) / "metrics.jsonl"
    deadline = time.time() + 180
    while not (metrics.exists() and read_jsonl(metrics)) and time.time() < deadline:
        time.sleep(0.2)
    assert read_jsonl(metrics), "training never started"
    if how == "signal":  # submitit's pre-time-out / preemption signal, as SLURM sends it to every process
        subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    else:  # an admin or the scheduler requeues the job: SLURM sends SIGTERM, the job must not count it as done
        subprocess.run(["scontrol", "requeue", job.job_id], check=True)
    while "requeue" not in events(cell) and time.time() < deadline:
        time.sleep(0.2)
    assert "requeue" in events(cell)
    stopped_at = read_jsonl(metrics)[-1]["images_seen"]
    # SLURM holds a requeued job for ~2 minutes (BeginTime); let it start now
    while slurm_state(job.job_id) not in ("PENDING", "RUNNING", "COMPLETED") and time.time() < deadline:
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={job.job_id}", "StartTime=now"], capture_output=True)
    (result,) = wait([job], [cell], poll_s=0.5, timeout_s=300)
    assert "error" not in result, result
    assert 0 < stopped_at < cell.total_images, "the signal must land mid-run"
    assert events(cell) == ["start", "requeue", "start", "finished"]
    # the same cell trained without interruption, in this process
    reference = make_cell("reference", total_images=48)
    train(reference)
    got, want = weights(cell.run_dir), weights(reference.run_dir)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_refused_before_submission(slurm_cluster, make_cell, tmp_path):
    cell = make_cell("refused")
    with pytest.raises(ValueError, match=r"needs 2 GPU\(s\).*partition 'debug' has 1 usable node"):
        launch([cell], partition="debug", gpus=2, folder=tmp_path / "logs")
    with pytest.raises(ValueError, match="partition 'nosuch' does not exist"):
        launch([cell], partition="nosuch", folder=tmp_path / "logs")
    assert not (tmp_path / "logs").exists(), "nothing was submitted"


def test_two_srun_tasks_train_one_cell_with_ddp(slurm_cluster, make_cell, tmp_path):
    """The multi-node path on one node: srun starts one task per process, each finds its rank in SLURM's
    variables; the result equals a single-process run up to summation order."""
    cell = make_cell("ddp")
    part = slurm_cluster["partition"]
    (job,) = launch([cell], partition=part, folder=tmp_path / "logs", cpus_per_task=1, cpu_tasks=2)
    assert job.num_tasks == 2
    (result,) = wait([job], [cell], poll_s=0.5, timeout_s=300)
    assert "error" not in result, result
    assert "global_rank=1(2)" in job.task(1).stdout(), "the second srun task ran"
    assert cell.batch_gpu == 2  # 4 images per iteration split over 2 processes
    reference = make_cell("single")
    train(reference)
    got, want = weights(cell.run_dir), weights(reference.run_dir)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=key)
