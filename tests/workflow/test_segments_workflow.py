"""A cell longer than the site's time limit runs through the workflow as a chain of segment jobs, each training
to its share of the images and the last one finishing the cell (Snakemake, local execution)."""

from __future__ import annotations

import pytest
import yaml

from eldistill.grid import build_grid, load_config
from eldistill.io import read_jsonl

from .conftest import REPO, snakemake

CI = REPO / "config" / "ci.yaml"


@pytest.mark.slow
def test_a_long_cell_runs_as_three_segments(tmp_path):
    overlay = tmp_path / "long.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                # a GPU plan on a GPU measured as very slow (1 GFLOP/s): the 128-image ci cell takes 35 min,
                # over a 20 min site limit
                "hardware": {"gpus_per_node": 1, "max_runtime_min": 20, "gpu_flops": 1.0e9},
                "teachers": {"digits-uncond": {"params": 56_000_000, "train": {"total_images": 64}}},
                "only_experiments": ["frameworks"],
            }
        )
    )
    g = build_grid(load_config([CI, overlay]))
    cell_id = g.rows[0]["cell_id"]
    cell, want = g.cells[cell_id], g.plans[cell_id]
    # 128 images x 1.08 FLOP x 56e6 params x 64 pixels / (1e9 x 0.5 fp32) = 991 s -> x 1.5 = 25 min + 10 = 35 min;
    # 25 min of work in jobs of at most 20 - 10 = 10 min: 3 segments of ceil(25 / 3) + 10 = 19 min
    assert (want["total_min"], want["segments"], want["runtime_min"]) == (35, 3, 19)
    work = tmp_path / "work"
    args = [f"results/ci/runs/{cell_id}/generator.pt", "--cores", "2", "--configfile", str(CI), str(overlay)]
    result = snakemake([*args, "--directory", str(work)], timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = result.stdout + result.stderr
    assert text.count("rule distill_segment:") == 2 and "rule distill:" in text
    results = work / "results" / "ci"
    # segments 1 and 2 end at 48 and 96 images (thirds of 128 rounded up to whole batches of 16), the last at 128
    for k, images in ((1, 48), (2, 96)):
        assert (results / "segments" / cell_id / f"{k}.done").read_text().strip() == str(images)
    log = read_jsonl(results / "runs" / cell_id / "metrics.jsonl")
    assert log[-1]["images_seen"] == cell.total_images == 128
    assert [r["images_seen"] for r in log] == sorted(r["images_seen"] for r in log)  # resumed, never restarted
    assert (results / "runs" / cell_id / "generator.pt").stat().st_size > 0
