"""Verdicts on hand-made per-seed tables: a clear effect, a null effect and a reversed effect, with the
t-intervals worked out by hand (t(0.975, 2) = 4.3027)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from eldistill.report.claims import make_claims, paired_el_differences, summarize, t_interval, verdict

T2 = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2)


def cell(distiller, el, seed, fid, batch=32, experiment="frameworks", n_archs=4, inits=4):
    key = f"digits16/{distiller}/{'el' if el else 'noel'}/bs{batch}" + ("/emb1x4" if el and n_archs == 1 else "")
    return {
        "experiment": experiment, "table": experiment, "cell_id": f"{key}/s{seed}".replace("/", "-"),
        "dataset": "digits", "resolution": 16, "conditional": False, "distiller": distiller, "el": el,
        "batch": batch, "n_archs": n_archs, "inits_per_arch": inits, "aux_loss": "el" if el else "none",
        "total_images": 4800, "protocol": "mini-classifier", "seed": seed, "fid": fid, "key": key,
    }  # fmt: skip


def world(effects: dict[str, list[float]], off=(20.0, 22.0, 24.0)) -> pd.DataFrame:
    """EL-off FIDs `off` for seeds 0, 1, 2 and EL-on = off + effect, per distiller."""
    rows = []
    for distiller, effect in effects.items():
        for seed, (f, d) in enumerate(zip(off, effect)):
            rows += [cell(distiller, False, seed, f), cell(distiller, True, seed, f + d)]
    return pd.DataFrame(rows)


NO_CURVES = pd.DataFrame(columns=["cell_id", "kind", "images_seen", "fid", "protocol"])


def test_t_interval_by_hand():
    mean, low, high, p = t_interval([-3.0, -2.0, -4.0])  # mean -3, SD 1, SEM 1/sqrt(3)
    assert mean == pytest.approx(-3.0)
    assert low == pytest.approx(-3.0 - T2 / math.sqrt(3)) and high == pytest.approx(-3.0 + T2 / math.sqrt(3))
    t = 3.0 * math.sqrt(3)  # |mean| / SEM; with 2 degrees of freedom P(T > t) = (1 - t / sqrt(t^2 + 2)) / 2
    assert p == pytest.approx(1 - t / math.sqrt(t * t + 2))
    assert math.isnan(t_interval([1.0])[1]) and math.isnan(t_interval([])[0])
    assert verdict(-2, -1, -1) == "supported" and verdict(1, 2, -1) == "contradicted"
    assert verdict(-1, 1, -1) == "inconclusive" and verdict(math.nan, math.nan, +1) == "inconclusive"


def test_clear_null_and_reversed_effects_get_their_verdicts():
    cells = world({"sid": [-3.0, -2.0, -4.0], "dmd": [1.0, -1.0, 0.5], "di": [3.0, 2.0, 4.0]})
    claims = make_claims(cells, NO_CURVES).set_index("distiller")
    assert claims.loc["sid", "verdict"] == "supported"
    assert claims.loc["dmd", "verdict"] == "inconclusive"
    assert claims.loc["di", "verdict"] == "contradicted"
    assert claims.loc["sid", "value"] == pytest.approx(-3.0)
    assert claims.loc["sid", "ci_high"] == pytest.approx(-3.0 + T2 / math.sqrt(3))
    assert claims.loc["dmd", "value"] == pytest.approx(0.5 / 3)
    assert set(claims["n_seeds"]) == {3} and set(claims["test"]) == {"paired t over seeds"}
    assert set(claims["claim"]) == {"el_lowers_fid"}
    assert claims.loc["sid", "key"] == "claim/el_lowers_fid/sid/digits-batch-32"


def test_one_seed_is_inconclusive_and_a_missing_seed_is_not_paired():
    cells = world({"sid": [-3.0, -2.0, -4.0]})
    one = cells[cells["seed"] == 0]
    assert make_claims(one, NO_CURVES)["verdict"].tolist() == ["inconclusive"]
    holed = cells.copy()
    holed.loc[(holed["seed"] == 2) & holed["el"], "fid"] = math.nan  # a crashed EL run: seed 2 drops out
    row = make_claims(holed, NO_CURVES).iloc[0]
    assert row["n_seeds"] == 2 and row["value"] == pytest.approx(-2.5)


def test_a_distiller_that_did_not_learn_is_excluded():
    cells = world({"cm": [-30.0, -20.0, -40.0]}, off=(400.0, 410.0, 420.0))
    assert make_claims(cells, NO_CURVES, learned_below_fid=100)["verdict"].tolist() == ["excluded"]
    assert make_claims(cells, NO_CURVES)["verdict"].tolist() == ["supported"]


def test_batch_claims_gain_and_graceful_degradation():
    rows = []
    # batch 32: off 20, on 18 (gain 2); batch 16: off 30, on 21 (gain 9) -> gain difference 7 every seed, give
    # or take the seed's jitter; relative increase with EL 21/18 - 1 = 0.167 against 30/20 - 1 = 0.5 without
    for seed, jitter in enumerate((0.0, 0.5, -0.5)):
        rows += [
            cell("sid", False, seed, 20.0, 32, "batch_size"), cell("sid", True, seed, 18.0, 32, "batch_size"),
            cell("sid", False, seed, 30.0 + jitter, 16, "batch_size"), cell("sid", True, seed, 21.0, 16, "batch_size"),
        ]  # fmt: skip
    claims = make_claims(pd.DataFrame(rows), NO_CURVES).set_index("claim")
    assert claims.loc["gain_larger_at_b16", "value"] == pytest.approx(7.0)
    assert claims.loc["gain_larger_at_b16", "verdict"] == "supported"
    assert claims.loc["graceful_small_batch", "value"] == pytest.approx(21 / 18 - 1 - 0.5)
    assert claims.loc["graceful_small_batch", "verdict"] == "supported"


def test_diversity_claim_reversed_is_contradicted():
    rows = []
    for seed, (full, single) in enumerate(((10.0, 9.0), (11.0, 10.2), (12.0, 10.8))):  # one arch is better
        rows += [cell("sid", True, seed, full, experiment="diversity"),
                 cell("sid", True, seed, single, experiment="diversity", n_archs=1)]  # fmt: skip
    claims = make_claims(pd.DataFrame(rows), NO_CURVES)
    row = claims.set_index("claim").loc["diversity"]
    assert row["value"] == pytest.approx(-1.0) and row["verdict"] == "contradicted"


def test_fewer_iterations_from_the_curves():
    rows, curves = [], []
    for seed in range(3):
        off, on = (
            cell("sid", False, seed, 20.0, experiment="convergence"),
            cell("sid", True, seed, 15.0, experiment="convergence"),
        )
        rows += [off, on]
        for images, f_off, f_on in ((1600, 40.0, 30.0), (3200, 30.0, 19.0 + seed), (4800, 20.0, 15.0)):
            curves += [{"cell_id": off["cell_id"], "kind": "snapshot", "images_seen": images, "fid": f_off},
                       {"cell_id": on["cell_id"], "kind": "snapshot", "images_seen": images, "fid": f_on}]  # fmt: skip
    claims = make_claims(pd.DataFrame(rows), pd.DataFrame(curves)).set_index("claim")
    row = claims.loc["fewer_iterations"]
    # seeds 0, 1 reach FID 20 at 3200 of 4800 images (33.3 % fewer); seed 2 (FID 21 at 3200) only at 4800 (0 %)
    assert row["value"] == pytest.approx((100 / 3 + 100 / 3 + 0) / 3)
    assert row["verdict"] == "inconclusive" and row["n_seeds"] == 3


def test_summary_and_el_effect_tables():
    cells = world({"sid": [-3.0, -2.0, -4.0]})
    summary = summarize(cells).set_index("key")
    assert summary.loc["digits16/sid/noel/bs32", "fid_mean"] == pytest.approx(22.0)
    assert summary.loc["digits16/sid/noel/bs32", "fid_ci_low"] == pytest.approx(22.0 - T2 * 2 / math.sqrt(3))
    assert summary.loc["digits16/sid/el/bs32", "n_seeds"] == 3
    effect = paired_el_differences(cells).iloc[0]
    assert effect["fid_diff_mean"] == pytest.approx(-3.0) and effect["verdict"] == "supported"
