"""A campaign survives its own failures: one cell is made to fail (a truncated training state, as a full disk
or a killed copy leaves), the others finish, and the tables, the diff and the progress summary still appear
with that cell marked `failed` and its log named. The rerun trains only that cell."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import yaml

from eldistill.grid import build_grid

from .conftest import REPO, snakemake


@pytest.mark.slow
def test_a_failed_cell_leaves_the_tables_and_the_summary(tmp_path):
    config = yaml.safe_load((REPO / "config" / "ci.yaml").read_text())
    del config["experiments"]["main"]  # two independent SiD cells, EL off and on: enough to see one fail
    config["gradvar"] = None
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    grid = build_grid(config)
    bad = next(row["cell_id"] for row in grid.rows if not row["el"])
    good = next(row["cell_id"] for row in grid.rows if row["el"])
    work = tmp_path / "work"
    state = work / "results" / "ci" / "state" / bad / "training-state.pt"
    state.parent.mkdir(parents=True)
    state.write_bytes(b"truncated")

    args = ["--cores", "2", "--keep-going", "all_tables", "--configfile", str(path), "--directory", str(work)]
    result = snakemake(args, timeout=1200)
    assert result.returncode != 0  # honest: a job failed
    tables = work / "results" / "ci" / "tables"
    frameworks = pd.read_csv(tables / "frameworks.csv", keep_default_na=False).set_index("cell_id")
    log = f"results/ci/logs/distill/{bad}.log"
    assert frameworks.loc[bad, "status"] == "failed" and frameworks.loc[bad, "log"] == log
    assert "unreadable training state" in (work / log).read_text()
    assert frameworks.loc[good, "status"] == "ok" and float(frameworks.loc[good, "fid"]) > 0
    assert pd.read_csv(tables / "cells.csv").set_index("cell_id").loc[bad, "status"] == "failed"
    assert "failed" in (tables / "frameworks.md").read_text()
    assert (work / "results" / "ci" / "diff" / "diff.csv").is_file()
    summary = (work / "results" / "ci" / "summary.txt").read_text()
    assert "done 1," in summary and "failed 1," in summary and log in summary

    # the progress verb, as a user runs it during a campaign: its own folder, the same marks
    cmd = [sys.executable, "-m", "eldistill.cli", "progress", "--configfile", str(path), "--directory", str(work)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "failed 1," in out.stdout and bad in out.stdout
    progress = work / "results" / "ci" / "progress"
    assert pd.read_csv(progress / "tables" / "cells.csv").set_index("cell_id").loc[bad, "status"] == "failed"

    # the cause removed, the rerun trains the failed cell only: the finished one is never retrained
    state.unlink()
    plan = snakemake(["-n", *args], timeout=300)
    assert plan.returncode == 0, plan.stderr[-3000:]
    text = plan.stdout + plan.stderr
    distill = [line for line in text.splitlines() if line.strip().startswith("wildcards: cell=")]
    assert distill and all(bad in line for line in distill), text[-3000:]
    assert "rule tables:" in text  # and the tables are rebuilt with it
