"""The gradient-variance probe: falling trend in K and B on its toy, the CSV it writes, bad flags."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest

from eldistill.embedding import gradvar

SMALL = dict(ks=(1, 2, 4, 8), batches=(8, 16, 32, 64), repeats=8, resolution=8)


@pytest.fixture(scope="module")
def resampled():
    return gradvar.gradient_variance(**SMALL)


def test_variance_falls_with_k_and_b(resampled):
    s = gradvar.slopes(resampled)
    assert s["joint_K"] < -0.6, s
    assert s["joint_B"] < -0.6, s
    corners = resampled.set_index(["K", "B"])["variance"]
    assert corners[(8, 64)] < 0.25 * corners[(1, 8)]


def test_fixed_embedders_isolate_the_batch_noise():
    df = gradvar.gradient_variance(**SMALL, fixed_embedders=True)
    s = gradvar.slopes(df)
    assert s["joint_B"] < -0.8, s  # mini-batch noise alone: close to O(1/B)
    assert (df["embedders"] == "fixed").all()


def test_slopes_and_additive_fit_recover_a_known_law():
    k, b = np.meshgrid([1, 2, 4, 8], [16, 32, 64], indexing="ij")
    df = pd.DataFrame({"K": k.ravel(), "B": b.ravel()})
    df["variance"] = 3.0 / df["K"] ** 1.0 / df["B"] ** 0.5
    s = gradvar.slopes(df)
    assert s["joint_K"] == pytest.approx(-1.0) and s["joint_B"] == pytest.approx(-0.5)
    df["variance"] = 0.2 / df["K"] + 5.0 / df["B"] + 3.0 / (df["K"] * df["B"]) + 0.01
    fit = gradvar.additive_fit(df)
    assert fit["a_over_K"] == pytest.approx(0.2) and fit["b_over_B"] == pytest.approx(5.0)
    assert fit["d_over_KB"] == pytest.approx(3.0)
    assert fit["c"] == pytest.approx(0.01) and fit["r2"] == pytest.approx(1.0)


def test_cli_writes_a_tidy_csv(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    gradvar.add_arguments(parser)
    out = tmp_path / "gv.csv"
    flags = ["--ks", "1,2", "--batches", "4,8", "--repeats", "3", "--resolution", "8"]
    args = parser.parse_args(["--out", str(out), *flags])
    assert gradvar.run(args) == 0
    df = pd.read_csv(out)
    assert list(zip(df["K"], df["B"])) == [(1, 4), (1, 8), (2, 4), (2, 8)]
    assert (df["variance"] > 0).all() and (df["repeats"] == 3).all() and (df["resolution"] == 8).all()
    assert "log-log slope joint_K" in capsys.readouterr().out


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ks": "1,0"}, "ks"),
        ({"ks": "1,two"}, "ks must be a comma-separated list"),
        ({"batches": ""}, "batches"),
        ({"repeats": 1}, "repeats"),
        ({"resolution": 4}, "resolution"),
        ({"batches": (1, 4)}, "batches must be at least 2"),
        ({"families": ("cnn", "mlp")}, "families"),
    ],
)
def test_bad_flags(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gradvar.gradient_variance(**kwargs)
