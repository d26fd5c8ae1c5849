"""The ci config through a real scheduler: the local single-node SLURM (tests/conftest.py's slurm_cluster) and
the profile slurm/local (job status from squeue: that cluster has no accounting database). Every cell's
outputs and the tables must come back."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from eldistill.grid import grid
from eldistill.io import read_jsonl

from .conftest import REPO, snakemake

CI = REPO / "config" / "ci.yaml"


@pytest.mark.slurm
def test_ci_config_through_local_slurm(slurm_cluster, tmp_path):
    work = tmp_path / "work"
    args = ["--profile", str(REPO / "slurm" / "local"), "all_tables", "--configfile", str(CI)]
    result = snakemake([*args, "--directory", str(work)], timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    text = result.stdout + result.stderr
    assert "Job stats" in text and "Complete log" in text

    g = grid([CI])
    results = work / "results" / "ci"
    for cell_id, cell in g.cells.items():
        run = results / "runs" / cell_id
        assert (run / "generator.pt").stat().st_size > 0
        assert json.loads((run / "config.json").read_text())["cell_id"] == cell_id
        assert read_jsonl(run / "metrics.jsonl")[-1]["images_seen"] == cell.total_images
    for row in g.rows:
        run = results / "runs" / row["cell_id"]
        final = [r for r in read_jsonl(run / "fid.jsonl") if r["kind"] == "final"]
        assert len(final) == 1 and final[0]["protocol"] == "mini-classifier" and math.isfinite(final[0]["fid"])
        assert (run / "samples.png").read_bytes()[:4] == b"\x89PNG"

    tables = results / "tables"
    frameworks = pd.read_csv(tables / "frameworks.csv")
    assert sorted(frameworks["el"]) == [False, True] and set(frameworks["status"]) == {"ok"}
    main_table = pd.read_csv(tables / "main.csv")
    assert list(main_table["distiller"]) == ["sid2a"] and main_table["fid"].notna().all()
    assert len(pd.read_csv(tables / "cells.csv")) == len(g.rows)
    for name in ("frameworks", "main"):
        assert (tables / f"{name}.md").stat().st_size > 0 and (tables / f"{name}.tex").stat().st_size > 0

    # the training and evaluation jobs really went through SLURM (their job logs are kept by the profile)
    logs = {p.parent.parent.name for p in work.rglob("*.log") if "slurm" in str(p.relative_to(work))}
    assert {"rule_distill", "rule_evaluate", "rule_train_teacher"} <= logs, logs
