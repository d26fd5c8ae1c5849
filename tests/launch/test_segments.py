"""A cell run as segments (`train --until-images`, then the rest) ends with the same weights as one run, and a
segment leaves no generator.pt behind (the workflow's last segment writes it)."""

from __future__ import annotations

from pathlib import Path

import torch

from eldistill.cli import main
from eldistill.io import read_jsonl
from eldistill.train import train


def test_segments_resume_to_the_weights_of_one_run(make_cell):
    cell = make_cell("segmented", total_images=24, snapshot_images=8)
    cell.save(Path(cell.run_dir).parent / "cell.json")
    assert main(["train", "--config", str(Path(cell.run_dir).parent / "cell.json"), "--until-images", "8"]) == 0
    assert not (Path(cell.run_dir) / "generator.pt").exists()
    assert read_jsonl(Path(cell.run_dir) / "metrics.jsonl")[-1]["images_seen"] == 8
    train(cell, until_images=16)
    train(cell)  # the last segment
    whole = make_cell("whole", total_images=24, snapshot_images=8)
    train(whole)
    got = torch.load(Path(cell.run_dir) / "generator.pt", weights_only=True)["state_dict"]
    want = torch.load(Path(whole.run_dir) / "generator.pt", weights_only=True)["state_dict"]
    for key in want:
        assert torch.equal(got[key], want[key]), key
    # the same snapshots (the convergence curve) as one run: segments add none of their own
    snaps = sorted(p.name for p in (Path(cell.state_dir) / "snapshots").glob("generator-*.pt"))
    assert snaps == sorted(p.name for p in (Path(whole.state_dir) / "snapshots").glob("generator-*.pt"))


def test_a_rerun_keeps_the_log_snakemake_deleted(make_cell, capfd):
    """Snakemake deletes run_dir's outputs (metrics.jsonl too) before it reruns an incomplete job or runs a cell's
    last segment: the resumed run restores the log from state_dir, cut at the state it resumes from."""
    cell = make_cell("rerun", total_images=24, snapshot_images=8, log_images=4)
    train(cell, until_images=8)
    log = Path(cell.run_dir) / "metrics.jsonl"
    first = read_jsonl(log)
    assert [r["images_seen"] for r in first] == [4, 8]
    log.unlink()  # what Snakemake does
    with open(Path(cell.state_dir) / "metrics.jsonl", "a") as f:
        f.write('{"images_seen": 12}\n{"images_s')  # a line past the saved state, and one torn by a kill
    train(cell)
    assert f"resumed cell {cell.cell_id} at 8 images (iteration 2)" in capfd.readouterr().err
    again = read_jsonl(log)
    assert again[:2] == first and [r["images_seen"] for r in again] == [4, 8, 12, 16, 20, 24]
    assert read_jsonl(Path(cell.state_dir) / "metrics.jsonl") == again
