"""`eldistill figures` regenerates every figure from a copied tables folder alone (the run folders are
deleted first), and each file is a valid, non-empty PDF / PNG whose title names the protocol."""

from __future__ import annotations

import shutil

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from eldistill.cli import main
from eldistill.report.common import CONVERGENCE_PAIRS
from eldistill.report.figures import (
    FIGURES,
    draw_batch_size,
    draw_convergence_pair,
    draw_gradvar,
    draw_samples_by_dataset,
    loglog_slope,
    make_figure,
)
from eldistill.report.tables import make_tables


@pytest.fixture(scope="module")
def copied_tables(world_once, tmp_path_factory):
    made = tmp_path_factory.mktemp("cluster") / "tables"
    make_tables(world_once["grid"], world_once["runs"], made, world_once["benchmarks"], world_once["gradvar"])
    laptop = tmp_path_factory.mktemp("laptop") / "tables"
    shutil.copytree(made, laptop)
    shutil.rmtree(made.parent)
    shutil.rmtree(world_once["grid"].parent)  # nothing but the copied tables is left
    return laptop


def check_pdf(path):
    data = path.read_bytes()
    assert data.startswith(b"%PDF-") and b"%%EOF" in data[-64:] and len(data) > 1000, path


def check_png(path):
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.width > 200 and image.height > 200
        pixels = np.asarray(image.convert("L"))
        assert pixels.std() > 0, f"{path} is blank"


@pytest.mark.parametrize("name", [f for f in FIGURES if f not in CONVERGENCE_PAIRS])  # pairs: below
def test_figure_regenerates_from_copied_tables_alone(copied_tables, tmp_path, name):
    out = tmp_path / "figures"
    assert main(["figures", "--tables", str(copied_tables), "--figure", name, "--out", str(out)]) == 0
    check_pdf(out / f"{name}.pdf")
    check_png(out / f"{name}.png")


def test_titles_name_the_protocol(copied_tables):
    fig = draw_batch_size(copied_tables, "batch_size")
    title = fig._suptitle.get_text()
    plt.close(fig)
    assert "mini-classifier" in title and "NOT comparable" in title
    fig = draw_gradvar(copied_tables)
    title = fig._suptitle.get_text()
    legends = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
    plt.close(fig)
    assert "repeats = 8" in title
    # variance = 3 / (K B) exactly, so every fitted log-log slope is -1
    assert legends and all(t.endswith("slope -1.00") for t in legends)


def test_loglog_slope_closed_form():
    x = np.array([1.0, 2.0, 4.0, 16.0])
    assert loglog_slope(x, 7.0 / x) == pytest.approx(-1.0)
    assert loglog_slope(x, 0.5 * x**-0.5) == pytest.approx(-0.5)


def test_missing_experiment_names_what_is_present(copied_tables, tmp_path):
    with pytest.raises(ValueError, match="no rows of experiment 'nope'.*batch_size"):
        make_figure(copied_tables, "frameworks", tmp_path / "f", experiment="nope")


def test_unknown_figure_and_missing_tables_are_named(copied_tables, tmp_path):
    with pytest.raises(ValueError, match="figure 'pie' is unknown"):
        make_figure(copied_tables, "pie", tmp_path / "f")
    with pytest.raises(ValueError, match="tables folder not found"):
        make_figure(tmp_path / "nowhere", "samples", tmp_path / "f")


def convergence_world(tables):
    """DI on CIFAR-10 (EL off/on; the off cell listed by two experiments), SiD2A on ImageNet 512 at 2048 and 16."""
    tables.mkdir(parents=True)
    header = "experiment,cell_id,key,dataset,distiller,batch,el,kind,images_seen,fid,protocol"
    rows = []
    for experiment in ("frameworks", "iterations"):
        rows += [f"{experiment},di-off,k1,cifar10,di,128,False,snapshot,{i},{f},p" for i, f in ((10, 9.0), (20, 6.0))]
    rows += [f"frameworks,di-on,k2,cifar10,di,128,True,snapshot,{i},{f},p" for i, f in ((10, 5.0), (20, 4.0))]
    rows += ["frameworks,di-on,k2,cifar10,di,128,True,final,20,3.9,p"]  # min-of-3 final: not a curve point
    rows += ["datasets,s-off,k3,imagenet512,sid2a,2048,False,final,100,2.2,p"]
    rows += ["datasets,s-on,k4,imagenet512,sid2a,2048,True,final,100,2.1,p"]
    rows += ["small_batch,s16,k5,imagenet512,sid2a,16,True,final,100,7.0,p"]
    (tables / "convergence.csv").write_text("\n".join([header, *rows]) + "\n")
    return tables


def test_convergence_pairs_draw_el_off_and_on(tmp_path):
    tables = convergence_world(tmp_path / "tables")
    fig = draw_convergence_pair(tables, "convergence_di_cifar10")
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in fig.axes[0].lines}
    plt.close(fig)
    # one line per cell (the cell two experiments list is drawn once), snapshots only when there are any
    assert lines == {"DI (batch 128)": ([10, 20], [9.0, 6.0]), "DI + EL (batch 128)": ([10, 20], [5.0, 4.0])}
    fig = draw_convergence_pair(tables, "convergence_sid2a_imagenet512")
    labels = sorted(line.get_label() for line in fig.axes[0].lines)
    plt.close(fig)
    assert labels == ["SID2A (batch 2048)", "SID2A + EL (batch 2048)"]  # batch 16 is another figure's
    for name in CONVERGENCE_PAIRS:
        paths = make_figure(tables, name, tmp_path / "figures")
        check_pdf(paths[0])
        check_png(paths[1])
    (tables / "convergence.csv").write_text((tables / "convergence.csv").read_text().replace("imagenet512", "ffhq"))
    with pytest.raises(ValueError, match="no FID records of sid2a on imagenet512 at batch 2048"):
        make_figure(tables, "convergence_sid2a_imagenet512", tmp_path / "figures")


def test_samples_by_dataset_shows_each_datasets_best_el_cell(copied_tables):
    fig = draw_samples_by_dataset(copied_tables)
    titles = [ax.get_title() for ax in fig.axes]
    plt.close(fig)
    # the world's cells with samples are both CIFAR-10 EL cells: sid2a+EL (FID 1.9) beats div-1x1 (12)
    assert titles == ["cifar10: sid2a + EL, FID 1.9"]


def _seeded_cells(tmp_path):
    """cells.csv of a frameworks experiment with 3 seeds: four learning distillers near FID 20, cm near 400."""
    rows = []
    for distiller, base in (("di", 30.0), ("sid", 25.0), ("dmd", 28.0), ("sid2a", 18.0), ("cm", 400.0)):
        for el in (False, True):
            for seed, jitter in enumerate((-1.0, 0.0, 1.0)):
                rows.append(
                    {"experiment": "frameworks", "cell_id": f"{distiller}-{el}-{seed}", "dataset": "digits",
                     "distiller": distiller, "el": el, "batch": 32, "seed": seed,
                     "fid": base * (0.9 if el else 1.0) + jitter, "protocol": "mini-classifier"}
                )  # fmt: skip
    tables = tmp_path / "tables"
    tables.mkdir()
    pd.DataFrame(rows).to_csv(tables / "cells.csv", index=False)
    return tables


def test_frameworks_draws_intervals_and_a_non_learning_distiller_never_sets_the_scale(tmp_path):
    from eldistill.report.figures import draw_frameworks

    fig = draw_frameworks(_seeded_cells(tmp_path), "frameworks")
    ax = fig.axes[0]
    top = ax.get_ylim()[1]
    assert 30.0 < top < 60.0, top  # set by di's 30 + its interval, not by cm's 400
    # error bars: the 95 % t-interval of (-1, 0, +1) around each mean is +-4.3027 / sqrt(3); none for cm
    lengths = [abs(seg[1][1] - seg[0][1]) for c in ax.collections for seg in c.get_segments()]
    assert sorted(round(v, 3) for v in lengths if v > 0) == [round(2 * 4.302653 / 3**0.5, 3)] * 8
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "400 off scale" in texts and "cm *" in [t.get_text() for t in ax.get_xticklabels()]
    plt.close(fig)


def test_claims_figure_colours_by_verdict_and_excluded_rows_do_not_set_the_scale(tmp_path):
    from eldistill.report.figures import VERDICT_COLORS, draw_claims

    tables = tmp_path / "tables"
    tables.mkdir()
    pd.DataFrame(
        [
            ("el_lowers_fid", "sid", "b32", -3.0, -5.0, -1.0, "supported"),
            ("el_lowers_fid", "dmd", "b32", 0.5, -1.0, 2.0, "inconclusive"),
            ("el_lowers_fid", "di", "b32", 3.0, 1.0, 5.0, "contradicted"),
            ("el_lowers_fid", "cm", "b32", -60.0, -61.0, -59.0, "excluded"),
        ],
        columns=["claim", "distiller", "scope", "value", "ci_low", "ci_high", "verdict"],
    ).assign(protocol="mini-classifier").to_csv(tables / "claims.csv", index=False)
    fig = draw_claims(tables)
    ax = fig.axes[0]
    assert ax.get_xlim()[1] < 10.0  # |5| x 1.3, not cm's 60
    shown = {t.get_text().split()[0]: t.get_color() for t in ax.texts}
    assert shown == {v: VERDICT_COLORS[v] for v in ("supported", "inconclusive", "contradicted", "excluded")}
    plt.close(fig)
