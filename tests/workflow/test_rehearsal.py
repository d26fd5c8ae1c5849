"""The paper grid rehearsed: config/paper.yaml + config/rehearsal.yaml keeps every experiment and cell, swaps only the
published files for stand-ins of the same format, and (slow) runs every job of the paper's DAG through the real
local SLURM, ending with every paper table and figure and a diff row with a status for every reported number."""

from __future__ import annotations

import collections
import hashlib
import re
from pathlib import Path

import pandas as pd
import pytest

from eldistill.checkpoints import load_edm_pickle
from eldistill.grid import build_grid, load_config
from eldistill.metrics.protocols import REHEARSAL, get_protocol, load_feature_net, load_reference
from eldistill.rehearsal.standins import make_standins

from .conftest import REPO, snakemake
from .test_dryrun import jobs_of

PAPER = REPO / "config" / "paper.yaml"
REHEARSAL_YAML = REPO / "config" / "rehearsal.yaml"
KNOWN_MISSING = REPO / "config" / "rehearsal" / "known_missing.csv"


def served_urls(config: dict) -> dict[str, str | None]:
    """Every file: URL of the overlay -> its pinned sha256 (None where the config pins none)."""
    urls = {
        d["prepare"]["url"]: d["prepare"].get("sha256")
        for d in config["datasets"].values()
        if "url" in d.get("prepare", {})
    }
    used = {cell.labels["teacher"] for cell in build_grid(config).cells.values()}  # edm2_sizes is not selected
    urls.update({t["url"]: t.get("sha256") for name, t in config["teachers"].items() if name in used})
    urls[config["protocol"]["feature_net_url"]] = None
    urls.update(dict.fromkeys(config["protocol"]["references"].values()))
    return urls


def test_one_rehearsal_cell_for_each_paper_cell_and_only_swapped_settings_differ():
    paper = build_grid(load_config([PAPER]))
    rehearsal = build_grid(load_config([PAPER, REHEARSAL_YAML]))
    assert len(rehearsal.cells) == len(paper.cells) and len(rehearsal.rows) == len(paper.rows)
    swapped = {"total_images", "snapshot_images", "log_images", "labels", "run_dir", "state_dir", "teacher", "dataset"}
    for p, r in zip(paper.rows, rehearsal.rows):  # the same experiments in the same order
        assert (p["experiment"], p["distiller"], p["el"], p["batch"], p["dataset"]) == (
            r["experiment"], r["distiller"], r["el"], r["batch"], r["dataset"],
        )  # fmt: skip
        if p["cell_id"] in paper.cells:
            a, b = paper.cells[p["cell_id"]].to_dict(), rehearsal.cells[r["cell_id"]].to_dict()
            differ = {k for k in a if a[k] != b[k]} - {"cell_id", "batch_gpu", "init_generator"}
            assert differ <= swapped, (p["cell_id"], differ)


def test_the_standins_are_the_pinned_bytes_in_the_published_formats(tmp_path):
    config = load_config([PAPER, REHEARSAL_YAML])
    served = make_standins(tmp_path / "rehearsal")
    for url, sha256 in served_urls(config).items():
        assert url.startswith("file:rehearsal/standins/"), url
        path = tmp_path / url.removeprefix("file:")
        assert path.is_file(), f"make-standins did not write {url}"
        if sha256:  # pinned: the download rule checks it; a change of make-standins must update the overlay
            assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256, (
                f"{url}: the stand-in changed; run `eldistill make-standins --out /tmp/r --pin config/rehearsal.yaml`"
            )
    standins = tmp_path / "rehearsal" / "standins"
    assert {Path(p).name for p in served.values()} >= {"inception-2015-12-05.pt", "img512.pkl"}
    classes = {
        name: (type(net).__name__, net.config.get("model_type"), net.img_resolution, net.img_channels)
        for name in config["teachers"]
        if (standins / "teachers" / f"{name}.pkl").is_file()
        for net in [load_edm_pickle(standins / "teachers" / f"{name}.pkl")]
    }
    assert classes["edm-cifar10-32x32-uncond-vp"] == ("EDMPrecond", "SongUNet", 32, 3)
    assert classes["edm-imagenet-64x64-cond-adm"] == ("EDMPrecond", "DhariwalUNet", 64, 3)
    assert classes["edm2-img512-xs-2147483-0.135"][0] == "EDM2Precond" and classes["edm2-img512-xs-2147483-0.135"][
        2:
    ] == (64, 4)
    detector = load_feature_net(get_protocol(REHEARSAL), standins / "inception-2015-12-05.pt")
    assert detector.dim == 2048
    reference = load_reference(standins / "fid-refs" / "img512.pkl")
    reference.check(get_protocol(REHEARSAL), detector.id, "img512.pkl")  # a published-format file serves both
    assert reference.mu.shape == (2048,)


@pytest.mark.slow
@pytest.mark.slurm
def test_the_paper_grid_runs_end_to_end_on_standins(slurm_cluster, tmp_path):
    work = tmp_path / "work"
    make_standins(work / "rehearsal")
    configs = ["--configfile", str(PAPER), str(REHEARSAL_YAML)]
    # one SLURM job per dozen cells (distillation and evaluation together): SLURM's start-up costs more than a cell
    groups = ["--groups", "distill=cells", "evaluate=cells", "evaluate_teacher=cells", "--group-components", "cells=12"]
    args = ["--profile", str(REPO / "slurm" / "local"), "all", *configs, "--keep-going", *groups]
    result = snakemake([*args, "--directory", str(work)], timeout=2400)
    text = result.stdout + result.stderr
    assert "Job stats" in text, text[-4000:]

    # every job of the paper's dry run ran: the same rules, as many jobs of each
    dry = snakemake(["-n", "--profile", str(REPO / "slurm"), "all", "--configfile", str(PAPER), "--directory",
                     str(tmp_path / "paper")], timeout=300)  # fmt: skip
    assert dry.returncode == 0, dry.stderr[-3000:]
    paper_jobs = collections.Counter(j["rule"] for j in jobs_of(dry.stdout + dry.stderr))
    done = collections.Counter(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", text))
    known = pd.read_csv(KNOWN_MISSING)
    failed_rules = set(re.findall(r"Error in rule (\w+):", text))
    assert failed_rules <= set(known["failing_rule"].dropna()), (failed_rules, text[-4000:])
    for rule, count in paper_jobs.items():
        if rule in ("all",) or rule in failed_rules:
            continue
        assert done[rule] >= count or rule in {"tables", "figure", "diff"}, (rule, done[rule], count)

    results = work / "results" / "rehearsal"
    grid = build_grid(load_config([PAPER, REHEARSAL_YAML]))
    for table in grid.tables:
        for ext in ("csv", "md", "tex"):
            assert (results / "tables" / f"{table}.{ext}").is_file(), (table, ext)
    figures = {j["wildcards"]["figure"] for j in jobs_of(dry.stdout + dry.stderr) if j["rule"] == "figure"}
    assert figures
    for figure in figures:
        for ext in ("pdf", "png"):
            assert (results / "figures" / f"{figure}.{ext}").is_file(), (figure, ext)

    diff = pd.read_csv(results / "diff" / "diff.csv", keep_default_na=False)
    reported = pd.read_csv(REPO / "config" / "paper" / "reported.csv", keep_default_na=False)
    assert set(reported["key"]) <= set(diff["paper_key"])
    assert (diff["status"] != "").all()
    missing = set(diff.loc[diff["status"] == "MISSING_OURS", "paper_key"])
    assert missing <= set(known["paper_key"]), sorted(missing - set(known["paper_key"]))
