"""`eldistill figures` regenerates every figure from a copied tables folder alone (the run folders are
deleted first), and each file is a valid, non-empty PDF / PNG whose title names the protocol."""

from __future__ import annotations

import shutil

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from eldistill.cli import main
from eldistill.report.figures import FIGURES, draw_batch_size, draw_gradvar, loglog_slope, make_figure
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


@pytest.mark.parametrize("name", FIGURES)
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
