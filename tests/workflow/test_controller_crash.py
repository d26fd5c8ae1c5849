"""A campaign outlives its controller: `snakemake --profile slurm/local all_tables` is killed (SIGKILL) while one
cell is finished and another is training with a saved state; its SLURM job dies too (the realistic worst case:
the node goes down, or the user cancels it). The README's recovery (`--unlock`, then the same command) finishes
the campaign: the finished cell is never retrained and the interrupted one resumes from its saved state."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from eldistill.grid import build_grid
from eldistill.io import read_jsonl
from eldistill.statefile import load_state
from eldistill.train import STATE_FILE, STATE_FORMAT

from .conftest import REPO, snakemake, start_snakemake

PROFILE = REPO / "slurm" / "local"
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "COMPLETING"}


def campaign_config() -> dict:
    """The ci config cut to two SiD cells of the frameworks table: EL on, 8 iterations (finishes first), and EL
    off, 32 iterations with its state saved every 4 (64 images); the teacher trains for 4 iterations."""
    config = yaml.safe_load((REPO / "config" / "ci.yaml").read_text())
    del config["experiments"]["main"]
    config["gradvar"] = None
    config["teachers"]["digits-uncond"]["train"]["total_images"] = 128
    frameworks = config["experiments"]["frameworks"]
    frameworks["vary"] = {"distiller": ["sid"]}
    frameworks["variants"] = [{"el": True}, {"el": False, "total_images": 512}]
    return config


def slurm_jobs(cell_id: str) -> dict[str, tuple[str, str]]:
    """{SLURM job id: (rule, state)} of the jobs the plugin submitted for `cell_id` (its --comment names them)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%k"], capture_output=True, text=True, check=True).stdout
    jobs = {}
    for line in out.splitlines():
        job_id, state, comment = line.split("|", 2)
        found = re.fullmatch(r"rule_(\w+?)_wildcards_(.*)", comment)
        if found and found.group(2) == cell_id:
            jobs[job_id] = (found.group(1), state)
    return jobs


def active_jobs(run_id: str) -> list[str]:
    """The states of the jobs of one Snakemake run (the plugin names its jobs with the run ID) not yet ended."""
    out = subprocess.run(["squeue", "-h", "--name", run_id, "-o", "%T"], capture_output=True, text=True, check=True)
    return [state for state in out.stdout.split() if state in ACTIVE]


def wait_for(condition, what: str, controller: subprocess.Popen | None, output: Path | None, timeout: float = 600):
    """Poll `condition()` until it returns something true (returned); fail if the controller ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if controller is not None and controller.poll() is not None:
            pytest.fail(f"snakemake ended (exit {controller.returncode}) before {what}:\n{output.read_text()[-4000:]}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def training_files(results: Path, cell_id: str) -> dict[str, tuple[str, int]]:
    """{path: (sha256, mtime in ns)} of what training writes: the distill job's outputs and the state folder
    (the evaluation's fid.jsonl and samples.png may be rewritten if the controller died before it noted them)."""
    run = results / "runs" / cell_id
    paths = [run / name for name in ("generator.pt", "metrics.jsonl", "config.json")]
    paths += sorted(p for p in (results / "state" / cell_id).rglob("*") if p.is_file())
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in paths}


@pytest.mark.slurm
@pytest.mark.slow
def test_a_killed_controller_picks_up_where_it_was(slurm_cluster, tmp_path):
    config = campaign_config()
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    grid = build_grid(config)
    done = next(row["cell_id"] for row in grid.rows if row["el"])
    cut = next(row["cell_id"] for row in grid.rows if not row["el"])
    total, every = grid.cells[cut].total_images, grid.cells[cut].snapshot_images
    work = tmp_path / "work"
    results = work / "results" / "ci"
    args = ["--profile", str(PROFILE), "all_tables", "--configfile", str(path), "--directory", str(work)]
    first = tmp_path / "first-controller.txt"
    controller = start_snakemake(args, first, timeout=900)
    try:
        # the long cell saved its state: freeze its job there (SLURM suspend) until the short cell is finished
        cut_state = results / "state" / cut
        wait_for(lambda: (cut_state / STATE_FILE).exists(), f"a saved state of {cut}", controller, first)
        job_id = next(j for j, (rule, state) in slurm_jobs(cut).items() if rule == "distill" and state == "RUNNING")
        subprocess.run(["scontrol", "suspend", job_id], check=True)
        assert not (results / "runs" / cut / "generator.pt").exists(), f"{cut} finished before it could be suspended"

        def finished():  # evaluated, and no job of the cell left in SLURM
            evaluated = all((results / "runs" / done / name).exists() for name in ("fid.jsonl", "samples.png"))
            return evaluated and not any(state in ACTIVE for _, state in slurm_jobs(done).values())

        wait_for(finished, f"the evaluation of {done}", controller, first)
    finally:
        # the crash: the controller and everything it started die at once
        os.killpg(controller.pid, signal.SIGKILL)
        controller.wait()
        # its SLURM jobs, found as the README says (the run ID in the dead controller's log names them), die too,
        # in the worst way: without saving (a node failure; a plain `scancel` would let training save at SIGTERM),
        # so the rerun must start from the last periodic state
        found = re.search(r"SLURM run ID: (\S+)", first.read_text())
        if found:
            subprocess.run(["scancel", "--full", "--signal=KILL", "--name", found.group(1)], check=True)
            subprocess.run(["scancel", "--name", found.group(1)], check=True)
    crash_time = time.time()
    assert found, first.read_text()[-3000:]
    wait_for(lambda: not active_jobs(found.group(1)), "the killed run's jobs to end", None, None)
    state, _ = load_state(cut_state / STATE_FILE, STATE_FORMAT)
    resume_at = state["images_seen"]
    assert 0 < resume_at < total and resume_at % every == 0  # saved with a snapshot; the kill left no save
    kept = training_files(results, done)

    # the recovery the README gives: release the dead controller's lock, run the same command
    unlock = snakemake(["--unlock", *args], timeout=300)
    assert unlock.returncode == 0, unlock.stdout[-3000:] + unlock.stderr[-3000:]
    rerun = snakemake(args, timeout=900)
    text = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, first.read_text()[-3000:] + text[-5000:]

    # the finished cell was not retrained: no distill job for it, its files untouched, one SLURM job in all
    distilled = re.findall(r"rule (distill\w*):\n(?:\s+\S.*\n)*?\s+wildcards: cell=(\S+)", text)
    assert [cell for _, cell in distilled] == [cut], distilled
    assert training_files(results, done) == kept
    assert len(list((work / "results" / "logs" / "slurm" / "rule_distill" / done).glob("*.log"))) == 1

    # the interrupted cell resumed from its state, and its log continued: the lines up to the saved state are the
    # first run's, the rest the rerun's, every log point once
    log = (results / "logs" / "distill" / f"{cut}.log").read_text()
    assert f"resumed cell {cut} at {resume_at} images" in log, log[-2000:]
    metrics = read_jsonl(results / "runs" / cut / "metrics.jsonl")
    step = grid.cells[cut].log_images
    assert [r["images_seen"] for r in metrics] == list(range(step, total + 1, step))
    assert all((r["time"] < crash_time) == (r["images_seen"] <= resume_at) for r in metrics)

    # both cells in the tables
    frameworks = pd.read_csv(results / "tables" / "frameworks.csv").set_index("cell_id")
    assert set(frameworks.index) == {done, cut} and set(frameworks["status"]) == {"ok"}
