"""Seeds as evidence: per-setting means with 95 % intervals, paired EL-on minus EL-off differences, and a
verdict per claim of the paper.

A *setting* is a cell without its training seed (the grid's `seed` column; several seeds of one setting share
its `key`). Every comparison pairs two settings seed by seed (same seed = same noise and real-image draws: the
differences are paired), and a one-sample t-interval on the per-seed differences gives the effect and its
95 % interval (`test` = "paired t over seeds"). The verdict of a claim at 95 %:
    supported      the interval lies entirely on the claimed side of 0
    contradicted   it lies entirely on the other side
    inconclusive   it contains 0, or fewer than 2 seeds pair up
    excluded       a distiller that did not learn (its EL-off mean FID is not below `learned_below_fid`):
                   a comparison of two failures says nothing about EL
Claims (effect = the statistic whose sign the claim predicts, in FID units unless said):
    el_lowers_fid         per distiller (and batch): FID(EL on) - FID(EL off) < 0
    gain_larger_at_b16    FID gain of EL (off - on) at batch 16 minus the gain at batch 32 > 0
    graceful_small_batch  relative FID increase from batch 32 to 16 with EL minus without EL < 0
                          (FID16/FID32 - 1 with EL, minus the same without)
    diversity             FID(1 architecture x 4 inits) - FID(4 x 4) > 0
    fewer_iterations      % fewer images EL needs to reach the final FID of its EL-off twin (same seed) > 0;
                          a seed whose EL run never reaches it counts as not reaching (all seeds not reaching:
                          contradicted; some: inconclusive)
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from eldistill.report.common import NO_AUX, is_missing

CONFIDENCE = 0.95
PAIRED_T = "paired t over seeds"
VERDICTS = ("supported", "contradicted", "inconclusive", "excluded")
# the settings that make two cells twins, besides the column being compared (and the seed)
SETTING = ("experiment", "dataset", "resolution", "conditional", "distiller", "batch", "total_images")
CLAIM_COLUMNS = (
    "key",
    "claim",
    "distiller",
    "scope",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n_seeds",
    "p_value",
    "test",
    "verdict",
    "protocol",
    "detail",
)
EFFECT_COLUMNS = (
    *SETTING,
    "key_on",
    "key_off",
    "n_seeds",
    "fid_diff_mean",
    "fid_diff_ci_low",
    "fid_diff_ci_high",
    "p_value",
    "verdict",
)


def t_interval(values, confidence: float = CONFIDENCE) -> tuple[float, float, float, float]:
    """(mean, low, high, two-sided p of mean = 0) of a one-sample t-interval; NaN interval below 2 values."""
    x = np.asarray([v for v in values if not (v is None or math.isnan(v))], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan, math.nan
    sem = float(x.std(ddof=1)) / math.sqrt(len(x))
    if sem == 0.0:  # every seed gave the same difference: the interval is that point
        return mean, mean, mean, (1.0 if mean == 0 else 0.0)
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1)) * sem
    p = float(2 * stats.t.sf(abs(mean) / sem, len(x) - 1))
    return mean, mean - half, mean + half, p


def verdict(low: float, high: float, claimed_sign: int) -> str:
    """supported / contradicted / inconclusive from an interval and the sign the claim predicts (+1 or -1)."""
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    if claimed_sign * low > 0 and claimed_sign * high > 0:
        return "supported"
    if claimed_sign * low < 0 and claimed_sign * high < 0:
        return "contradicted"
    return "inconclusive"


def _aux(cells: pd.DataFrame) -> pd.Series:
    """aux_loss with 'el' and empty folded into 'none' (EL itself is the on/off column)."""
    return cells["aux_loss"].map(lambda a: "none" if is_missing(a) or str(a).lower() in NO_AUX else str(a))


def _seeds(cells: pd.DataFrame) -> pd.Series:
    return cells["seed"] if "seed" in cells.columns else pd.Series(0, index=cells.index)


def summarize(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per (experiment, key): the settings, n_seeds, FID mean, SD and 95 % t-interval over the seeds
    that have a final FID; `seeds` lists them."""
    cells = cells.assign(seed=_seeds(cells))
    settings = ("table", *SETTING, "el", "n_archs", "inits_per_arch", "aux_loss", "protocol")
    rows = []
    for (_, key), group in cells.groupby(["experiment", "key"], sort=False, dropna=False):
        ok = group.dropna(subset=["fid"])
        mean, low, high, _ = t_interval(ok["fid"])
        first = group.iloc[0]
        rows.append(
            {
                **{c: first[c] for c in settings if c in group.columns},
                "key": key,
                "n_seeds": len(ok),
                "fid_mean": mean,
                "fid_sd": float(ok["fid"].std(ddof=1)) if len(ok) > 1 else math.nan,
                "fid_ci_low": low,
                "fid_ci_high": high,
                "seeds": ",".join(str(int(s)) for s in sorted(ok["seed"])),
                "cells": len(group),
            }
        )
    return pd.DataFrame(rows)


def _protocol(*frames: pd.DataFrame) -> str:
    """The FID protocol(s) of the cells a claim row compares."""
    return ",".join(sorted({str(p) for f in frames for p in f["protocol"] if not is_missing(p)}))


def _by_seed(rows: pd.DataFrame, column: str = "fid") -> dict[int, float]:
    return {int(s): float(v) for s, v in zip(_seeds(rows), rows[column]) if not pd.isna(v)}


def _paired(a: dict[int, float], b: dict[int, float], fn=lambda x, y: x - y) -> dict[int, float]:
    return {s: fn(a[s], b[s]) for s in sorted(set(a) & set(b))}


def _row(claim, distiller, scope, metric, diffs: dict[int, float], sign: int, protocol, detail, key=None) -> dict:
    mean, low, high, p = t_interval(list(diffs.values()))
    return {
        "key": key or f"claim/{claim}/{distiller}/{scope}".replace(" ", "-"),
        "claim": claim,
        "distiller": distiller,
        "scope": scope,
        "metric": metric,
        "value": mean,
        "ci_low": low,
        "ci_high": high,
        "n_seeds": len(diffs),
        "p_value": p,
        "test": PAIRED_T,
        "verdict": verdict(low, high, sign),
        "protocol": protocol,
        "detail": detail + "; per seed " + ", ".join(f"{s}: {v:.4g}" for s, v in diffs.items()),
    }


def _twins(cells: pd.DataFrame):
    """(setting values, EL-off rows, EL-on rows) of every group of cells that differ only in EL and seed
    (no auxiliary loss, the full grid settings otherwise equal, same ensemble for the EL side)."""
    cells = cells.assign(_aux=_aux(cells))
    plain = cells[cells["_aux"] == "none"]
    for values, group in plain.groupby(list(SETTING), dropna=False, sort=False):
        off = group[~group["el"]]
        on = group[group["el"]]
        if off.empty or on.empty:
            continue
        # the EL side with the most embedders (the paper's 4 x 4 when present): a diversity cell is not a twin
        size = on["n_archs"].astype(float) * on["inits_per_arch"].astype(float)
        on = on[size == size.max()]
        yield dict(zip(SETTING, values)), off, on


def learned(off: pd.DataFrame, learned_below_fid: float | None) -> bool:
    return learned_below_fid is None or bool(off["fid"].mean() < learned_below_fid)


def make_claims(cells: pd.DataFrame, convergence: pd.DataFrame, learned_below_fid: float | None = None) -> pd.DataFrame:
    """The claim rows (module docstring); cells = cells.csv rows (one per grid row), convergence = its records."""
    cells = cells.assign(seed=_seeds(cells)).drop_duplicates(["cell_id", "experiment"])
    rows, seen = [], set()
    twins = list(_twins(cells))
    for setting, off, on in twins:
        pair = (tuple(sorted(off["cell_id"])), tuple(sorted(on["cell_id"])))
        distiller, batch = setting["distiller"], int(setting["batch"])
        scope = f"{setting['dataset']} batch {batch}"
        if pair in seen or (distiller, scope) in {(r["distiller"], r["scope"]) for r in rows}:
            continue  # the same cells reached through another experiment
        seen.add(pair)
        diffs = _paired(_by_seed(on), _by_seed(off))
        if not diffs:
            continue  # no seed has both FIDs: nothing to say
        row = _row("el_lowers_fid", distiller, scope, "fid_el_minus_noel", diffs, -1, _protocol(off, on),
                   f"EL on {on['key'].iloc[0]} minus off {off['key'].iloc[0]} ({setting['experiment']})")  # fmt: skip
        if not learned(off, learned_below_fid):
            row["verdict"] = "excluded"
            row["detail"] = (
                f"did not learn: EL-off mean FID {off['fid'].mean():.4g} >= {learned_below_fid:g}; " + row["detail"]
            )
        rows.append(row)
    rows += _batch_claims(twins, learned_below_fid)
    diversity = _diversity(cells)
    if diversity:
        rows.append(diversity)
    rows += _iterations(twins, convergence, learned_below_fid)
    return pd.DataFrame(rows, columns=list(CLAIM_COLUMNS))


def _batch_claims(twins, learned_below_fid) -> list[dict]:
    """gain_larger_at_b16 and graceful_small_batch for each distiller with EL twins at batch 16 and 32."""
    by = {}
    for setting, off, on in twins:
        by.setdefault((setting["experiment"], setting["distiller"], setting["total_images"]), {})[
            int(setting["batch"])
        ] = (off, on)
    rows = []
    done = set()
    for (experiment, distiller, _), batches in by.items():
        if 16 not in batches or 32 not in batches or distiller in done:
            continue
        done.add(distiller)
        (off16, on16), (off32, on32) = batches[16], batches[32]
        f = {name: _by_seed(rows_) for name, rows_ in (("off16", off16), ("on16", on16), ("off32", off32),
                                                       ("on32", on32))}  # fmt: skip
        common = sorted(set.intersection(*(set(v) for v in f.values())))
        if not common:
            continue
        gain = {s: (f["off16"][s] - f["on16"][s]) - (f["off32"][s] - f["on32"][s]) for s in common}
        graceful = {
            s: (f["on16"][s] / f["on32"][s] - 1.0) - (f["off16"][s] / f["off32"][s] - 1.0)
            for s in common
            if f["on32"][s] > 0 and f["off32"][s] > 0
        }
        for claim, metric, diffs, sign, what in (
            ("gain_larger_at_b16", "el_gain_b16_minus_b32", gain, +1, "(off-on) at batch 16 minus at batch 32"),
            ("graceful_small_batch", "rel_increase_el_minus_noel", graceful, -1,
             "(FID16/FID32 - 1) with EL minus without EL"),
        ):  # fmt: skip
            protocol = _protocol(off16, on16, off32, on32)
            row = _row(claim, distiller, "batch 16 vs 32", metric, diffs, sign, protocol, f"{what} ({experiment})")
            if not (learned(off16, learned_below_fid) and learned(off32, learned_below_fid)):
                row["verdict"] = "excluded"
            rows.append(row)
    return rows


def _diversity(cells: pd.DataFrame) -> dict | None:
    """FID(1 x 4) - FID(4 x 4) paired by seed, on the first group (experiment, setting) that has both; the row
    keeps the key and metric of the paper's claim (claim/diversity, % gain) with the FID difference as effect."""
    el = cells[cells["el"] & cells["fid"].notna()]
    for _, group in el.groupby(list(SETTING), dropna=False, sort=False):
        full = group[(group["n_archs"] == 4) & (group["inits_per_arch"] == 4)]
        single = group[(group["n_archs"] == 1) & (group["inits_per_arch"] == 4)]
        if full.empty or single.empty:
            continue
        diffs = _paired(_by_seed(single), _by_seed(full))
        if not diffs:
            continue
        gains = _paired(_by_seed(single), _by_seed(full), lambda a, b: 100.0 * (a - b) / a)
        protocol = _protocol(single, full)
        row = _row("diversity", group["distiller"].iloc[0], "1x4 vs 4x4", "fid_1x4_minus_4x4", diffs, +1, protocol,
                   f"{single['key'].iloc[0]} minus {full['key'].iloc[0]}")  # fmt: skip
        row["detail"] += f"; mean % gain {np.mean(list(gains.values())):.3g}" if gains else ""
        return row
    return None


def _curve(records: pd.DataFrame) -> pd.DataFrame:
    snaps = records[records["kind"] == "snapshot"]
    curve = snaps if len(snaps) else records[records["kind"] == "final"]
    curve = curve.dropna(subset=["fid", "images_seen"]).drop_duplicates("images_seen")
    return curve.sort_values("images_seen")


def _iterations(twins, convergence: pd.DataFrame, learned_below_fid) -> list[dict]:
    """fewer_iterations per distiller with EL twins that have FID curves (the convergence experiment)."""
    rows = []
    for setting, off, on in twins:
        if setting["experiment"] != "convergence":
            continue
        reductions, reached = {}, {}
        on_by_seed = {int(s): c for s, c in zip(_seeds(on), on["cell_id"])}
        for seed, off_id in zip(_seeds(off), off["cell_id"]):
            seed = int(seed)
            off_curve = _curve(convergence[convergence["cell_id"] == off_id])
            if off_curve.empty or seed not in on_by_seed:
                continue
            target, off_images = off_curve.iloc[-1][["fid", "images_seen"]]
            on_curve = _curve(convergence[convergence["cell_id"] == on_by_seed[seed]])
            hit = on_curve[on_curve["fid"] <= target]
            reached[seed] = not hit.empty
            if len(hit) and off_images > 0:
                reductions[seed] = 100.0 * (1.0 - hit["images_seen"].iloc[0] / off_images)
        if not reached:
            continue
        row = _row("fewer_iterations", setting["distiller"], f"{setting['dataset']} batch {int(setting['batch'])}",
                   "iteration_reduction_pct", reductions, +1, _protocol(off, on),
                   f"seeds reaching the EL-off final FID: {sum(reached.values())}/{len(reached)}")  # fmt: skip
        row["n_seeds"] = len(reached)
        if not any(reached.values()):
            row["verdict"] = "contradicted"
        elif not all(reached.values()):
            row["verdict"] = "inconclusive"
        if not learned(off, learned_below_fid):
            row["verdict"] = "excluded"
        rows.append(row)
    return rows


def paired_el_differences(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per EL twin pair of settings (any experiment): EL-on minus EL-off FID, mean and 95 % interval
    over the paired seeds, for the tables' `el_effect` file."""
    rows = []
    for setting, off, on in _twins(cells.assign(seed=_seeds(cells))):
        diffs = _paired(_by_seed(on), _by_seed(off))
        mean, low, high, p = t_interval(list(diffs.values()))
        rows.append(
            {
                **setting,
                "key_on": on["key"].iloc[0],
                "key_off": off["key"].iloc[0],
                "n_seeds": len(diffs),
                "fid_diff_mean": mean,
                "fid_diff_ci_low": low,
                "fid_diff_ci_high": high,
                "p_value": p,
                "verdict": verdict(low, high, -1),
            }
        )
    return pd.DataFrame(rows, columns=EFFECT_COLUMNS)
