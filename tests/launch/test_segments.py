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
