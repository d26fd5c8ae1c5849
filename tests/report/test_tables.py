"""`eldistill tables` on the hand-made world of conftest.py: every expected number is worked out by hand."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest

from eldistill.cli import main
from eldistill.report.common import cell_key, dataset_tag
from eldistill.report.tables import make_tables, read_cell, read_grid, tidy_gradvar

MINI = "mini-classifier"
PAPER = "fid50k-tf-inception"

# cell_id -> fid, fid_best_snapshot, images_seen, iterations, wall_seconds, gpu_seconds, key, status, protocol
NAN = math.nan
EXPECTED = {
    "sid2a-el": (1.9, 2.0, 400, 100, 105.0, 420.0, "cifar10-uncond/sid2a/el/bs256", "ok", MINI),
    "sid2a-noel": (3.1, 3.0, 400, 100, math.nan, math.nan, "cifar10-uncond/sid2a/noel/bs256", "ok", MINI),
    "bs16-el": (5.0, NAN, 400, 100, NAN, NAN, "cifar10-uncond/sid2a/el/bs16", "ok", MINI),
    "bs16-noel": (40.0, NAN, 400, 100, NAN, NAN, "cifar10-uncond/sid2a/noel/bs16", "ok", MINI),
    "div-4x4": (9.0, math.nan, 200, 50, 30.0, 30.0, "cifar10-uncond/sid2a/el/bs64", "ok", MINI),
    "div-1x4": (10.0, math.nan, 200, 50, math.nan, math.nan, "cifar10-uncond/sid2a/el/bs64/emb1x4", "ok", MINI),
    "div-1x1": (12.0, math.nan, 200, 50, math.nan, math.nan, "cifar10-uncond/sid2a/el/bs64/emb1x1", "ok", MINI),
    "missing": (NAN, NAN, NAN, NAN, NAN, NAN, "ffhq16/dmd/el/bs32/aux-gan", "not_run", MINI),
    "snaps-only": (math.nan, 5.5, 120, 4, math.nan, math.nan, "ffhq16/dmd/noel/bs32", "no_final", MINI),
    "wrongproto": (2.5, math.nan, 120, 30, 50.0, 100.0, "imagenet512-xs/sid/el/bs2048", "protocol_mismatch", PAPER),
}
COLUMNS = ("fid", "fid_best_snapshot", "images_seen", "iterations", "wall_seconds", "gpu_seconds", "key", "status")


def same(a, b) -> bool:
    if isinstance(b, float) and math.isnan(b):
        return isinstance(a, float) and math.isnan(a)
    return a == pytest.approx(b) if isinstance(b, float | int) else a == b


@pytest.fixture(scope="module")
def tables(world_once, tmp_path_factory):
    world = world_once
    out = tmp_path_factory.mktemp("out") / "tables"
    code = main(
        ["tables", "--grid", str(world["grid"]), "--runs", str(world["runs"]), "--benchmarks",
         str(world["benchmarks"]), "--gradvar", str(world["gradvar"]), "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    return out


def test_one_table_per_grid_table_with_every_row(tables):
    for name, cells in (("main", 2), ("curves", 2), ("batch", 4), ("ablation", 3), ("frameworks", 3)):
        for ext in ("csv", "md", "tex"):
            assert (tables / f"{name}.{ext}").stat().st_size > 0
        assert len(pd.read_csv(tables / f"{name}.csv")) == cells
    assert len(pd.read_csv(tables / "cells.csv")) == 14


def test_every_cell_gets_the_hand_computed_numbers(tables):
    cells = pd.read_csv(tables / "cells.csv", keep_default_na=True)
    for _, row in cells.iterrows():
        expected = dict(zip(COLUMNS, EXPECTED[row["cell_id"]]))
        for col, value in expected.items():
            assert same(row[col], value), (row["cell_id"], col, row[col], value)
        assert row["protocol"] == EXPECTED[row["cell_id"]][-1]


def test_protocol_columns_travel_with_every_row(tables):
    main_table = pd.read_csv(tables / "main.csv")
    assert list(main_table["feature_net"]) == ["classifier-abc"] * 2
    assert list(main_table["num_samples"]) == [500, 500]
    assert list(main_table["reference"]) == ["ref-mini.npz"] * 2
    assert list(main_table["aggregation"]) == ["final"] * 2
    frameworks = pd.read_csv(tables / "frameworks.csv").set_index("cell_id")
    assert frameworks.loc["missing", "protocol"] == MINI  # the planned protocol of a cell never run
    assert frameworks.loc["wrongproto", "feature_net"] == "inception-2015-12-05"


def test_miniature_markdown_says_not_comparable(tables):
    text = (tables / "main.md").read_text()
    header = text.split("|", 1)[0]
    assert "miniature protocol" in header and "NOT comparable" in header
    assert "2 cells, 2 with a final FID" in header
    latex = (tables / "main.tex").read_text()
    assert "NOT comparable" in latex
    # 105 s x 4 GPUs = 420 GPU s = 0.12 GPU h; FIDs with the paper's three decimals
    assert r"cifar10 16 & sid2a & on & 256 & 4x4 & el & 1.900 & 2.000 & 400 & 0.12 & ok \\" in latex


def test_shared_cell_appears_in_both_experiments_with_one_number(tables):
    cells = pd.read_csv(tables / "cells.csv")
    shared = cells[cells["cell_id"] == "sid2a-el"]
    assert sorted(shared["experiment"]) == ["batch_size", "convergence", "main"]
    assert list(shared["fid"]) == [1.9, 1.9, 1.9]


def test_convergence_has_every_record_and_skips_torn_lines(tables):
    conv = pd.read_csv(tables / "convergence.csv")
    # per grid row: 5 records for each of the two sid2a cells (x3 experiments), 1 per batch-16 and diversity
    # cell, 2 snapshots for snaps-only, 1 for wrongproto, none for the cell never run
    assert len(conv) == 15 + 15 + 2 + 3 + 2 + 1
    curve = conv[(conv["cell_id"] == "sid2a-noel") & (conv["experiment"] == "convergence")]
    assert list(curve["images_seen"]) == [100, 200, 300, 400, 400]
    assert list(curve["kind"]) == ["snapshot"] * 4 + ["final"]
    assert list(curve["fid"]) == [10.0, 6.0, 4.0, 3.0, 3.1]
    assert set(conv["protocol"]) == {MINI, PAPER}


def test_claims_are_computed_by_hand(tables):
    claims = pd.read_csv(tables / "claims.csv").set_index("key")
    # EL-off ends at FID 3.0 after 400 images; EL-on first reaches <= 3.0 at 300 images: 25 % fewer
    assert claims.loc["claim/iterations", "value"] == pytest.approx(25.0)
    assert claims.loc["claim/iterations", "metric"] == "max_iteration_reduction_pct"
    # 4x4 ensemble FID 9 against one architecture with 4 inits FID 10: 10 % lower
    assert claims.loc["claim/diversity", "value"] == pytest.approx(10.0)
    assert set(claims["protocol"]) == {MINI}


def test_samples_are_copied_byte_for_byte(tables, world_once):
    for cell_id in ("sid2a-el", "div-1x1"):
        copied = tables / "samples" / f"{cell_id}.png"
        assert copied.read_bytes() == (world_once["runs"] / cell_id / "samples.png").read_bytes()
    cells = pd.read_csv(tables / "cells.csv").drop_duplicates("cell_id").set_index("cell_id")
    assert cells.loc["sid2a-el", "samples"] == "samples/sid2a-el.png"
    assert pd.isna(cells.loc["sid2a-noel", "samples"])


def test_gradvar_is_tidied(tables):
    gradvar = pd.read_csv(tables / "gradvar.csv")
    assert list(gradvar.columns[:3]) == ["K", "batch", "variance"]
    assert list(gradvar["K"]) == [1, 1, 2, 2, 4, 4, 8, 8]
    row = gradvar[(gradvar["K"] == 4) & (gradvar["batch"] == 64)]
    assert float(row["variance"].iloc[0]) == pytest.approx(3.0 / 256)


def test_no_results_at_all_gives_nan_rows_not_a_crash(world, tmp_path):
    cells = make_tables(world["grid"], tmp_path / "no-runs", tmp_path / "t")
    assert set(cells["status"]) == {"not_run"}
    assert cells["fid"].isna().all()
    assert pd.read_csv(tmp_path / "t" / "claims.csv").empty


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace(",aux_loss,", ",auxloss,"), "missing column(s) aux_loss"),
        (lambda t: t.replace(",false,sid2a,true,", ",maybe,sid2a,true,", 1), "column 'conditional', row 2"),
        (lambda t: t.replace("mini,cifar10,16,", "mini,cifar10,sixteen,", 1), "column 'resolution', row 2"),
        (lambda t: t.replace("main,main,", "main,cells,", 1), "column 'table', row 2"),
    ],
)
def test_bad_grid_names_the_column(world, edit, message):
    world["grid"].write_text(edit(world["grid"].read_text()))
    with pytest.raises(ValueError, match="GRID.csv") as err:
        read_grid(world["grid"])
    assert message in str(err.value)


def test_gradvar_without_variance_names_the_file(tmp_path):
    path = tmp_path / "gv.csv"
    path.write_text("K,batch,other\n1,2,3\n")
    with pytest.raises(ValueError, match="gv.csv: missing gradvar column"):
        tidy_gradvar(path)


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (("cifar10", 32, True, "sid2a", True, 256, 4, 4, "none"), "cifar10-cond/sid2a/el/bs256"),
        (("afhqv2", 64, False, "sid", False, 512, None, None, None), "afhqv2-64/sid/noel/bs512"),
        (("ffhq", 64, False, "sid2a", True, None, 2, 4, "el"), "ffhq64/sid2a/el/emb2x4"),
        (("imagenet", 64, True, "dmd", False, 280, 1, 1, "regression"), "imagenet64/dmd/noel/bs280/aux-regression"),
    ],
)
def test_key_format(args, key):
    assert cell_key(*args) == key


def test_dataset_tag_reads_the_edm2_size_from_the_teacher():
    assert dataset_tag("imagenet", 512, True, "edm2-img512-xxl-0939524-0.015") == "imagenet512-xxl"
    assert dataset_tag("imagenet", 512, True, "edm2-img512-s-2147483-0.130") == "imagenet512-s"
    assert dataset_tag("imagenet", 512, True, "teachers/mine") == "imagenet512"


def test_non_finite_or_foreign_records_get_a_status(tmp_path):
    run = tmp_path / "c1"
    run.mkdir()
    (run / "fid.jsonl").write_text('{"fid": NaN, "kind": "final", "protocol": "p", "cell_id": "c1"}\n')
    result, _ = read_cell(run, "c1", "p")
    assert result["status"] == "fid_not_finite" and math.isnan(result["fid"])
    (run / "fid.jsonl").write_text('{"fid": 2.0, "kind": "final", "protocol": "p", "cell_id": "other"}\n')
    result, records = read_cell(run, "c1", "p")
    assert (result["status"], records) == ("cell_id_mismatch", []) and math.isnan(result["fid"])


def test_rewritten_checkpoint_counts_with_its_current_content_only():
    from eldistill.report.tables import _first_per_checkpoint

    recs = [
        {"kind": "snapshot", "checkpoint": "s1.pt", "checkpoint_digest": "old", "fid": 1.0},  # stale
        {"kind": "snapshot", "checkpoint": "s2.pt", "checkpoint_digest": "a", "fid": 5.0},
        {"kind": "snapshot", "checkpoint": "s1.pt", "checkpoint_digest": "new", "fid": 9.0},
        {"kind": "snapshot", "checkpoint": "s1.pt", "checkpoint_digest": "new", "fid": 8.0},  # 2nd seed range
        {"kind": "final", "checkpoint": "g.pt", "checkpoint_digest": "g", "fid": 8.0},
    ]
    kept = _first_per_checkpoint(recs)
    assert [(r["checkpoint"], r["fid"]) for r in kept] == [("s2.pt", 5.0), ("s1.pt", 9.0), ("g.pt", 8.0)]


@pytest.mark.parametrize(
    "record, message",
    [
        ({"fid": -3.2}, "record 1: 'fid' = -3.2 is impossible for an FID (a squared distance), which is >= 0"),
        ({"fid": "2.5"}, "record 1: 'fid' = '2.5' is not a number"),
        ({"fid": 2.0, "is_mean": 0.4}, "record 1: 'is_mean' = 0.4 is impossible for an Inception Score"),
        ({"fid": 2.0, "num_samples": -50}, "record 1: 'num_samples' = -50 must be a non-negative integer"),
    ],
)
def test_impossible_numbers_in_fid_jsonl_are_refused_by_name(tmp_path, record, message):
    """A negative FID used to become status ok (and then BETTER in the diff)."""
    run = tmp_path / "c1"
    run.mkdir()
    line = {"kind": "final", "protocol": "p", "cell_id": "c1", **record}
    (run / "fid.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{run / 'fid.jsonl'}: {message}")):
        read_cell(run, "c1", "p")
