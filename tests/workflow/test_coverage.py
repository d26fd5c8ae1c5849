"""Every row of config/paper/reported.csv has a cell: the paper grid with a synthetic FID for every cell (every
experiment switched on) leaves no MISSING_OURS row in the diff."""

from __future__ import annotations

import json

from eldistill.grid import grid, write_grid_csv
from eldistill.report.diff import make_diff, read_reported
from eldistill.report.tables import make_tables

from .conftest import REPO

PAPER = REPO / "config" / "paper.yaml"


def test_every_reported_row_joins_a_cell(tmp_path):
    overlay = tmp_path / "on.yaml"
    overlay.write_text("experiments:\n  edm2_sizes: {enabled: true}\n")  # the one line that switches it on
    g = grid([PAPER, overlay])
    write_grid_csv(g.rows, tmp_path / "grid.csv")
    for i, row in enumerate(g.rows):  # a synthetic world where EL helps: every number exists
        run = tmp_path / "runs" / row["cell_id"]
        run.mkdir(parents=True, exist_ok=True)
        cell = g.cells.get(row["cell_id"])
        teacher = cell.teacher if cell else g.teacher_evals[row["cell_id"]]["teacher_path"]
        (run / "config.json").write_text(json.dumps({"teacher": teacher}))
        fid = 2.0 + (i % 5) / 10 - (0.5 if row["el"] else 0.0)
        record = {"fid": fid, "protocol": "fid50k-tf-inception", "feature_net": "inception", "num_samples": 50000}
        record.update(
            reference="ref", aggregation="min-of-3-seeds", kind="final", images_seen=1, cell_id=row["cell_id"]
        )
        (run / "fid.jsonl").write_text(json.dumps(record) + "\n")
    make_tables(tmp_path / "grid.csv", tmp_path / "runs", tmp_path / "tables")
    reported = REPO / "config" / "paper" / "reported.csv"
    diff = make_diff(reported, tmp_path / "tables", REPO / "config" / "paper" / "tolerances.yaml", tmp_path / "diff")
    compared = diff[diff["paper_key"].notna()]
    assert len(compared) == len(read_reported(reported))
    missing = compared[compared["status"] == "MISSING_OURS"]
    assert missing.empty, missing[["paper_key", "key", "note"]].to_string()
    by_key = compared.set_index("paper_key")
    # the rows this issue added cells for, each joined to the cell that stands for it
    assert by_key.loc["teacher/imagenet64", "key"] == "imagenet64/teacher-edm-511nfe/noel"
    assert by_key.loc["baseline/imagenet64/dmd2", "key"] == "imagenet64/dmd2/noel/bs280"
    assert by_key.loc["baseline/imagenet512-xxl/sid2a", "key"] == "imagenet512-xxl/sid2a/noel/bs2048"
    assert by_key.loc["baseline/imagenet64/cm", "key"] == "imagenet64/cm/noel/bs2048"
    # claims the paper gives no comparable number for: computed, shown next to it
    for claim in ("claim/dmd-batch", "claim/small-batch"):
        assert (
            by_key.loc[claim, "status"] == "NOT_COMPARABLE" and by_key.loc[claim, "ours"] == by_key.loc[claim, "ours"]
        )
