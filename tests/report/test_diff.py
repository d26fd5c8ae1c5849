"""`eldistill diff` on a hand-made pair of tables: every reported and every own row gets the status worked
out by hand below (tolerance for fid: abs 0.05, rel 0)."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from eldistill.cli import main
from eldistill.report.diff import compare, make_diff, read_tolerances
from eldistill.report.tables import make_tables

PAPER = "fid50k-tf-inception"
MINI = "mini-classifier"
REPORTED = f"""key,dataset,resolution,conditional,teacher,distiller,el,batch_size,metric,value,direction,protocol,source
cifar10-uncond/sid2a/el/bs256,cifar10,32,false,edm-cifar10-32x32-uncond-vp,sid2a,true,256,fid,1.475,lower,{PAPER},s1
cifar10-cond/sid2a/el/bs256,cifar10,32,true,edm-cifar10-32x32-cond-vp,sid2a,true,256,fid,1.380,lower,{PAPER},s2
baseline/cifar10-uncond/sid,cifar10,32,false,edm-cifar10-32x32-uncond-vp,sid,false,256,fid,1.923,lower,{PAPER},s3
baseline/cifar10-cond/sid,cifar10,32,true,edm-cifar10-32x32-cond-vp,sid,false,256,fid,1.710,lower,{PAPER},s4
teacher/cifar10-uncond,cifar10,32,false,edm-cifar10-32x32-uncond-vp,teacher-edm-35nfe,false,,fid,1.97,lower,{PAPER},s5
ffhq64/sid2a/el,ffhq,64,false,edm-ffhq-64x64-uncond-vp,sid2a,true,,fid,1.06,lower,{PAPER},s6
imagenet512/sid2a/el/bs2048,imagenet512,512,true,edm2-img512-xs (inferred),sid2a,true,2048,fid,2.132,lower,{PAPER},s7
baseline/imagenet64/sid,imagenet64,64,true,edm-imagenet-64x64-cond-adm,sid,false,8192,fid,1.524,lower,{PAPER},s8
claim/iterations,*,,,,*,true,,max_iteration_reduction_pct,80,higher,claim,s9
claim/diversity,*,,,,*,true,,fid_gain_4arch4init_vs_1arch_pct,10,higher,claim,s10
claim/small-batch,imagenet,512,true,,sid2a,true,16,graceful_degradation,,n/a,claim,s11
baseline/afhqv2-64/sid2a,afhqv2,64,false,edm-afhqv2-64x64-uncond-vp,sid2a,false,512,fid,1.276,lower,{PAPER},s12
afhqv2-64/sid2a/el,afhqv2,64,false,edm-afhqv2-64x64-uncond-vp,sid2a,true,,fid,1.26,lower,{PAPER},s13
"""
# cell_id, key, fid, protocol, status, distiller, el, conditional
CELLS = [
    ("a", "cifar10-uncond/sid2a/el/bs256", 1.4754, PAPER, "ok", "sid2a", True, False),
    ("b", "cifar10-cond/sid2a/el/bs256", 1.400, PAPER, "ok", "sid2a", True, True),
    ("c", "cifar10-uncond/sid/noel/bs256", 1.700, PAPER, "ok", "sid", False, False),
    ("d", "cifar10-cond/sid/noel/bs256", 2.000, PAPER, "ok", "sid", False, True),
    ("e", "ffhq64/sid2a/el/bs512", 1.20, PAPER, "ok", "sid2a", True, False),
    ("f", "ffhq64/sid2a/el/bs256", 1.07, PAPER, "ok", "sid2a", True, False),
    ("g", "imagenet512-xs/sid2a/el/bs2048", 2.0, MINI, "ok", "sid2a", True, True),
    ("h", "imagenet64/sid/noel/bs8192", None, PAPER, "not_run", "sid", False, True),
    ("i", "digits16/sid2a/noel/bs64", 30.0, MINI, "ok", "sid2a", False, False),
    ("j", "cifar10-uncond/dmd/el/bs64/aux-gan", 3.0, PAPER, "ok", "dmd", True, False),
    ("k", "digits16/sid2a/el/bs64/emb2x1", 25.0, MINI, "ok", "sid2a", True, False),
]
CLAIMS = [
    ("claim/iterations", "max_iteration_reduction_pct", 78.0, PAPER),
    ("claim/diversity", "fid_gain_4arch4init_vs_1arch_pct", 16.0, PAPER),
]
EXPECTED_PAPER = {
    "cifar10-uncond/sid2a/el/bs256": ("MATCH", "a"),  # 1.4754 prints as 1.475
    "cifar10-cond/sid2a/el/bs256": ("WITHIN_TOL", "b"),  # |1.400 - 1.380| = 0.02 <= 0.05
    "baseline/cifar10-uncond/sid": ("BETTER", "c"),  # 1.700 < 1.923 - 0.05
    "baseline/cifar10-cond/sid": ("WORSE", "d"),  # 2.000 > 1.710 + 0.05
    "teacher/cifar10-uncond": ("MISSING_OURS", None),  # we never evaluate the teacher
    "ffhq64/sid2a/el": ("WITHIN_TOL", "f"),  # no batch in the paper: our best batch, 1.07 vs 1.06
    "imagenet512/sid2a/el/bs2048": ("NOT_COMPARABLE", "g"),  # key via the XS teacher; miniature protocol
    "baseline/imagenet64/sid": ("MISSING_OURS", None),  # our cell has no FID (not_run)
    "claim/iterations": ("WITHIN_TOL", ""),  # |78 - 80| <= 15
    "claim/diversity": ("BETTER", ""),  # 16 > 10 + 5, higher is better
    "claim/small-batch": ("MISSING_OURS", None),  # not computed by us
    "baseline/afhqv2-64/sid2a": ("NOT_COMPARABLE", "i"),  # only a miniature analogue
    "afhqv2-64/sid2a/el": ("NOT_COMPARABLE", "k"),  # analogue with the miniature's smaller ensemble; g is cond
}
EXPECTED_OURS_ONLY = {"e": "MISSING_PAPER", "j": "MISSING_PAPER"}  # ffhq bs512 lost to bs256; no paper aux row
TOLERANCES = """fid: {abs: 0.05, rel: 0}
max_iteration_reduction_pct: {abs: 15}
default: {abs: 5}
"""


@pytest.fixture
def pair(tmp_path):
    tables = tmp_path / "tables"
    tables.mkdir()
    columns = ["cell_id", "key", "fid", "protocol", "status", "distiller", "el", "conditional"]
    cells = pd.DataFrame(CELLS, columns=columns)
    cells.assign(table="t").to_csv(tables / "cells.csv", index=False)
    pd.DataFrame(CLAIMS, columns=["key", "metric", "value", "protocol"]).to_csv(tables / "claims.csv", index=False)
    reported = tmp_path / "reported.csv"
    reported.write_text(REPORTED)
    tolerances = tmp_path / "tolerances.yaml"
    tolerances.write_text(TOLERANCES)
    return {"reported": reported, "tables": tables, "tolerances": tolerances, "out": tmp_path / "diff"}


def test_every_cell_gets_its_expected_status(pair):
    diff = make_diff(pair["reported"], pair["tables"], pair["tolerances"], pair["out"])
    paper_rows = diff[diff["paper_key"].notna()].set_index("paper_key")
    assert sorted(paper_rows.index) == sorted(EXPECTED_PAPER)
    for paper_key, (status, cell_id) in EXPECTED_PAPER.items():
        assert paper_rows.loc[paper_key, "status"] == status, paper_key
        if cell_id is None:
            assert pd.isna(paper_rows.loc[paper_key, "ours"]), paper_key
        elif cell_id:
            assert paper_rows.loc[paper_key, "cell_id"] == cell_id, paper_key
    ours_only = diff[diff["paper_key"].isna()].set_index("cell_id")["status"].to_dict()
    assert ours_only == EXPECTED_OURS_ONLY
    assert len(diff) == len(EXPECTED_PAPER) + len(EXPECTED_OURS_ONLY)


def test_numbers_delta_and_tolerance(pair):
    diff = make_diff(pair["reported"], pair["tables"], pair["tolerances"], pair["out"]).set_index("paper_key")
    row = diff.loc["baseline/cifar10-cond/sid"]
    assert (row["paper"], row["ours"]) == (1.710, 2.0)
    assert row["delta"] == pytest.approx(0.29)
    assert row["tolerance"] == pytest.approx(0.05)
    assert diff.loc["claim/iterations", "tolerance"] == pytest.approx(15.0)
    assert "best of 2" in diff.loc["ffhq64/sid2a/el", "note"]
    assert "not_run" in diff.loc["baseline/imagenet64/sid", "note"]
    not_comparable = diff.loc["imagenet512/sid2a/el/bs2048"]
    assert not_comparable["ours"] == 2.0 and pd.isna(not_comparable["delta"])  # no delta across protocols


def test_outputs_csv_and_markdown_with_summary(pair):
    make_diff(pair["reported"], pair["tables"], pair["tolerances"], pair["out"])
    assert len(pd.read_csv(pair["out"] / "diff.csv")) == 15
    text = (pair["out"] / "diff.md").read_text()
    summary = (
        "**Summary:** MATCH 1, WITHIN_TOL 3, BETTER 2, WORSE 1, MISSING_OURS 3, MISSING_PAPER 2, "
        "NOT_COMPARABLE 3 (total 15)"
    )
    assert summary in text


def test_fail_on_sets_the_exit_code(pair, capsys):
    base = ["diff", "--reported", str(pair["reported"]), "--tables", str(pair["tables"])]
    base += ["--tolerances", str(pair["tolerances"]), "--out", str(pair["out"])]
    assert main(base) == 0
    assert main([*base, "--fail-on", "WORSE"]) == 1
    assert main([*base, "--fail-on", "missing_ours,NOT_COMPARABLE"]) == 1
    capsys.readouterr()
    assert main([*base, "--fail-on", "WORST"]) == 1
    assert "unknown status(es) WORST" in capsys.readouterr().err


def test_fail_on_a_status_that_does_not_occur_passes(pair):
    pair["tables"].joinpath("cells.csv").write_text(
        pair["tables"].joinpath("cells.csv").read_text().replace("2.0,fid50k", "1.72,fid50k")
    )
    base = ["diff", "--reported", str(pair["reported"]), "--tables", str(pair["tables"])]
    base += ["--tolerances", str(pair["tolerances"]), "--out", str(pair["out"]), "--fail-on", "WORSE"]
    assert main(base) == 0  # 1.72 is within 0.05 of 1.710: no WORSE left


@pytest.mark.parametrize(
    ("paper", "ours", "direction", "tol", "status"),
    [
        ("1.475", 1.4749, "lower", (0, 0), "MATCH"),
        ("1.475", 1.4744, "lower", (0, 0), "BETTER"),
        ("1.475", 1.4744, "lower", (0, 0.01), "WITHIN_TOL"),  # 0.0006 <= 0.01 * 1.475
        ("1.475", 1.5, "lower", (0.01, 0), "WORSE"),
        ("80", 80.4, "higher", (0, 0), "MATCH"),
        ("80", 79.0, "higher", (0.5, 0), "WORSE"),
        ("80", 81.0, "higher", (0.5, 0), "BETTER"),
    ],
)
def test_compare_closed_cases(paper, ours, direction, tol, status):
    assert compare(paper, ours, direction, tol) == status


def test_missing_tolerance_names_the_metric(pair):
    pair["tolerances"].write_text("fid: {abs: 0.05}\n")
    with pytest.raises(ValueError, match="no tolerance for metric 'max_iteration_reduction_pct'"):
        make_diff(pair["reported"], pair["tables"], pair["tolerances"], pair["out"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fid: {abs: -1}\n", "'fid.abs' must be a non-negative number"),
        ("fid: {absolute: 1}\n", "'fid' must be a mapping with keys abs and/or rel"),
        ("- fid\n", "expected a mapping"),
    ],
)
def test_bad_tolerances_name_the_key(tmp_path, text, message):
    path = tmp_path / "tol.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="tol.yaml") as err:
        read_tolerances(path)
    assert message in str(err.value)


def test_missing_tables_folder_names_the_file(pair, tmp_path):
    with pytest.raises(ValueError, match="cells.csv"):
        make_diff(pair["reported"], tmp_path / "nowhere", pair["tolerances"], pair["out"])


def test_diff_reads_what_tables_writes(world, pair, tmp_path):
    tables = tmp_path / "made"
    make_tables(world["grid"], world["runs"], tables, world["benchmarks"], world["gradvar"])
    diff = make_diff(pair["reported"], tables, pair["tolerances"], tmp_path / "d").set_index("paper_key")
    row = diff.loc["cifar10-uncond/sid2a/el/bs256"]
    assert (row["status"], row["cell_id"], row["ours"]) == ("NOT_COMPARABLE", "sid2a-el", 1.9)  # miniature FID
    assert diff.loc["claim/iterations", "status"] == "NOT_COMPARABLE"  # 25 %, computed from miniature FIDs
    assert diff.loc["claim/iterations", "ours"] == pytest.approx(25.0)


def test_reported_file_missing_a_column_is_a_message_not_a_traceback(pair):
    import subprocess
    import sys

    text = pair["reported"].read_text().splitlines()
    header = text[0].split(",")
    drop = header.index("direction")
    pair["reported"].write_text("\n".join(",".join(c for i, c in enumerate(line.split(",")) if i != drop)
                                          for line in text) + "\n")  # fmt: skip
    args = ["--reported", str(pair["reported"]), "--tables", str(pair["tables"])]
    args += ["--tolerances", str(pair["tolerances"]), "--out", str(pair["out"]), "--fail-on", "WORSE"]
    out = subprocess.run([sys.executable, "-m", "eldistill.cli", "diff", *args], capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"{pair['reported']}: missing column(s) direction" in out.stderr


@pytest.mark.parametrize(
    "where, value, message",
    [
        ("ours", -0.5, "cell b, column 'fid': fid = -0.5 is impossible"),
        ("ours", "abc", "cell b, column 'fid': 'abc' is not a number"),
        ("paper", "-1.7", "column 'value': fid = -1.7 is impossible"),
        ("paper", "nan", "column 'value': nan is not a finite number"),
        ("paper", "inf", "column 'value': inf is not a finite number"),
    ],
)
def test_non_physical_numbers_are_refused_by_name(pair, where, value, message):
    """A negative FID in our table used to become BETTER (exit 0 even with --fail-on WORSE)."""
    if where == "ours":
        cells = pd.read_csv(pair["tables"] / "cells.csv", dtype=str)
        cells.loc[cells["cell_id"] == "b", "fid"] = str(value)
        cells.to_csv(pair["tables"] / "cells.csv", index=False)
    else:
        reported = pd.read_csv(pair["reported"], dtype=str, keep_default_na=False)
        reported.loc[reported["key"] == "baseline/cifar10-cond/sid", "value"] = value
        reported.to_csv(pair["reported"], index=False)
    with pytest.raises(ValueError, match=re.escape(message)):
        make_diff(pair["reported"], pair["tables"], pair["tolerances"], pair["out"])


def test_a_setting_with_seeds_is_compared_by_its_mean_never_its_best_seed(pair):
    """Three seeds of one setting (FIDs 1.2, 1.5, 2.1; a fourth failed) and another setting's single seed: the
    diff compares the seed mean 1.6 with its t-interval, worked out by hand, and lists every cell of it."""
    tables = pair["tables"]
    columns = ["experiment", "cell_id", "key", "fid", "protocol", "status", "seed", "distiller", "el", "conditional"]
    rows = [
        ("main", "s0", "cifar10-uncond/sid/noel/bs256", 1.2, PAPER, "ok", 0, "sid", False, False),
        ("main", "s1", "cifar10-uncond/sid/noel/bs256", 1.5, PAPER, "ok", 1, "sid", False, False),
        ("main", "s2", "cifar10-uncond/sid/noel/bs256", 2.1, PAPER, "ok", 2, "sid", False, False),
        ("main", "s3", "cifar10-uncond/sid/noel/bs256", None, PAPER, "failed", 3, "sid", False, False),
        ("long", "t0", "cifar10-uncond/sid/noel/bs256", 1.7, PAPER, "ok", 0, "sid", False, False),
    ]
    pd.DataFrame(rows, columns=columns).assign(table="t").to_csv(tables / "cells.csv", index=False)
    diff = make_diff(pair["reported"], tables, pair["tolerances"], pair["out"]).set_index("paper_key")
    row = diff.loc["baseline/cifar10-uncond/sid"]
    # mean 1.6; SD of (1.2, 1.5, 2.1) = sqrt(0.21); t(0.975, 2) = 4.302653; half width = 4.302653 * sqrt(0.21 / 3)
    half = 4.302653 * (0.21 / 3) ** 0.5
    assert row["ours"] == pytest.approx(1.6) and row["n_seeds"] == 3
    assert (row["ours_ci_low"], row["ours_ci_high"]) == (pytest.approx(1.6 - half), pytest.approx(1.6 + half))
    assert row["status"] == "BETTER"  # 1.6 < 1.923 - 0.05; the best seed (1.2) is never the number
    assert row["cell_id"] == "s0;s1;s2;s3" and row["our_status"] == "ok,failed"
    assert "best of 2 of our settings" in row["note"]
    other = diff[diff["cell_id"] == "t0"].iloc[0]  # the single-seed setting lost to the mean 1.6
    assert other["status"] == "MISSING_PAPER" and other["n_seeds"] == 1 and pd.isna(other["ours_ci_low"])
