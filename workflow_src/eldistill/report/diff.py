"""`eldistill diff`: every number of config/paper/reported.csv joined with ours, one status each.

Ours: TABLES/cells.csv (metric `fid`, one row per cell) and TABLES/claims.csv (computed claims).
Join: each reported row gets the key `tables` gives our rows (report.common.cell_key), rebuilt from its
columns (dataset, resolution, conditional, teacher, distiller, el, batch_size); `claim/*` rows keep their
key. A reported row without batch_size matches our rows of any batch. Our number for a setting is the mean
over its training seeds (the cells of one experiment that share a key; `n_seeds`, and with 2 or more seeds
the 95 % t-interval `ours_ci_low`..`ours_ci_high`), never the best seed: one lucky seed is not a result.
When several settings match, the one under the paper's protocol with the lowest mean is compared (the
paper reports its best configuration) and the `note` says how many there were. Our rows that no reported
row compares with are MISSING_PAPER.
A reported FID row with no key match is shown against its analogue under another protocol when there is
one (the miniature's cell of the same distiller, EL and conditioning, no auxiliary loss, the full ensemble
when the miniature has one):
NOT_COMPARABLE, so a miniature run lists each paper number next to the number that stands for it.

Statuses, in the order they are decided:
    MISSING_OURS    no row of ours, or ours has no number (the cell's status says why)
    NOT_COMPARABLE  the protocols differ (a miniature FID, or a claim computed from one), or the paper gives
                    no number or no direction
    MATCH           ours rounded to the paper's printed decimals equals the paper's number
    WITHIN_TOL      |ours - paper| <= abs + rel * |paper|  (tolerances per metric, below)
    BETTER / WORSE  beyond the tolerance, in the metric's direction (lower or higher is better)
    MISSING_PAPER   a row of ours with no reported number

Tolerances YAML: one entry per metric, each `{abs: A, rel: R}` (non-negative; a missing one is 0), and an
optional `default` entry for metrics not listed, e.g.
    fid: {abs: 0.05, rel: 0.05}
    max_iteration_reduction_pct: {abs: 10}
    default: {abs: 0, rel: 0}
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import pandas as pd
import yaml
from tqdm import tqdm

from eldistill.io import atomic_write_bytes
from eldistill.report.claims import t_interval
from eldistill.report.common import PAPER_PROTOCOL, cell_key, parse_bool, read_csv

STATUSES = ("MATCH", "WITHIN_TOL", "BETTER", "WORSE", "MISSING_OURS", "MISSING_PAPER", "NOT_COMPARABLE")
REPORTED_COLUMNS = (
    "key",
    "dataset",
    "resolution",
    "conditional",
    "teacher",
    "distiller",
    "el",
    "batch_size",
    "metric",
    "value",
    "direction",
    "protocol",
    "source",
)
DIFF_COLUMNS = (
    "status",
    "paper_key",
    "key",
    "metric",
    "paper",
    "ours",
    "n_seeds",
    "ours_ci_low",
    "ours_ci_high",
    "delta",
    "tolerance",
    "direction",
    "paper_protocol",
    "our_protocol",
    "cell_id",
    "table",
    "our_status",
    "source",
    "note",
)


def read_tolerances(path: str | Path) -> dict[str, tuple[float, float]]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"tolerances file not found: {path}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of metric -> {{abs, rel}}")
    tolerances = {}
    for metric, entry in data.items():
        if not isinstance(entry, dict) or set(entry) - {"abs", "rel"}:
            raise ValueError(f"{path}: '{metric}' must be a mapping with keys abs and/or rel, got {entry!r}")
        values = []
        for name in ("abs", "rel"):
            value = entry.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{path}: '{metric}.{name}' must be a non-negative number, got {value!r}")
            values.append(float(value))
        tolerances[str(metric)] = (values[0], values[1])
    return tolerances


def read_reported(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"reported file not found: {path}")
    # strings, so that a value keeps its printed decimals (1.380 has three)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in REPORTED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    keys = []
    for i, row in df.iterrows():
        where = f"{path}: row {i + 2} ({row['key']})"
        if row["value"].strip():
            try:
                value = float(row["value"])
            except ValueError:
                raise ValueError(f"{where}: column 'value' is not a number: {row['value']!r}") from None
            check_value(value, row["metric"], f"{where}: column 'value'")
        if row["key"].startswith("claim/"):
            keys.append(row["key"])
            continue
        el = parse_bool(row["el"], f"{where}: column 'el'")
        conditional = parse_bool(row["conditional"] or "false", f"{where}: column 'conditional'")
        batch = row["batch_size"].strip() or None
        resolution = row["resolution"] or None
        keys.append(
            cell_key(row["dataset"], resolution, conditional, row["distiller"], el, batch, teacher=row["teacher"])
        )
    df["match_key"] = keys
    return df


def check_value(value: float, metric: str, where: str) -> None:
    """Refuse a number no measurement gives: NaN/inf, or a negative FID (a squared distance)."""
    if not math.isfinite(value):
        raise ValueError(f"{where}: {value!r} is not a finite number")
    if str(metric).startswith("fid") and value < 0:
        raise ValueError(f"{where}: {metric} = {value!r} is impossible (an FID is a squared distance, >= 0)")


def _decimals(text: str) -> int:
    return len(text.split(".", 1)[1]) if "." in text else 0


def compare(paper_text: str, ours: float, direction: str, tolerance: tuple[float, float]) -> str:
    """The status of a pair of numbers under the same protocol (see the module docstring)."""
    paper = float(paper_text)
    decimals = _decimals(paper_text.strip())
    if f"{ours:.{decimals}f}" == f"{paper:.{decimals}f}":
        return "MATCH"
    if abs(ours - paper) <= tolerance[0] + tolerance[1] * abs(paper):
        return "WITHIN_TOL"
    better = ours < paper if direction == "lower" else ours > paper
    return "BETTER" if better else "WORSE"


def our_rows(tables_dir: str | Path) -> pd.DataFrame:
    """One row per our number: key, metric, value, protocol, cell_id, table, our_status, and for cells the
    seeds behind the value (n_seeds, ci_low, ci_high). The cells of one setting (same experiment and key: its
    training seeds) give one row, their mean FID."""
    tables_dir = Path(tables_dir)
    cells = read_csv(tables_dir / "cells.csv", ("cell_id", "table", "key", "fid", "protocol", "status"), "cells table")
    tables = cells.groupby("cell_id", sort=False)["table"].agg(lambda t: ";".join(dict.fromkeys(map(str, t))))
    cells = cells.drop_duplicates("cell_id").set_index("cell_id")
    cells["table"] = tables
    for cell_id, fid in cells["fid"][cells["fid"].notna()].items():  # NaN = no number (its status says why)
        value = pd.to_numeric(fid, errors="coerce")
        where = f"{tables_dir / 'cells.csv'}: cell {cell_id}, column 'fid'"
        if pd.isna(value):
            raise ValueError(f"{where}: {fid!r} is not a number")
        check_value(float(value), "fid", where)
    cells["fid"] = pd.to_numeric(cells["fid"])
    setting = [c for c in ("experiment", "key", "protocol") if c in cells.columns]
    ours = pd.DataFrame([_setting_row(group) for _, group in cells.groupby(setting, sort=False, dropna=False)])
    claims_path = tables_dir / "claims.csv"
    if claims_path.is_file():
        claims = read_csv(claims_path, ("key", "metric", "value", "protocol"), "claims table")
        claims = claims.assign(cell_id="", table="claims", our_status="ok")
        claims = claims.reindex(columns=ours.columns)
        ours = pd.concat([ours, claims], ignore_index=True) if len(claims) else ours
    return ours


def _setting_row(seeds: pd.DataFrame) -> dict:
    """One setting's row: the mean FID of its seeds that have one, their t-interval, every cell id, and the
    statuses of all its cells (a seed that failed or has not run yet shows there)."""
    first = seeds.iloc[0]
    mean, low, high, _ = t_interval(seeds["fid"].dropna())
    return {
        "key": first["key"],
        "metric": "fid",
        "value": mean,
        "protocol": first["protocol"],
        "cell_id": ";".join(map(str, seeds.index)),
        "table": first["table"],
        "our_status": ",".join(dict.fromkeys(map(str, seeds["status"]))),
        "distiller": first.get("distiller"),
        "el": first.get("el"),
        "conditional": first.get("conditional"),
        "n_seeds": int(seeds["fid"].notna().sum()),
        "ci_low": low,
        "ci_high": high,
    }


def _analogues(ours: pd.DataFrame, paper_row: pd.Series) -> pd.DataFrame:
    """Our rows measured under another protocol (the miniature) that stand for a paper row: same metric,
    distiller, EL and conditioning, no auxiliary loss; rows with the full ensemble when there are any (the
    miniature may run EL with a smaller ensemble everywhere)."""
    if paper_row["key"].startswith("claim/") or not ours["protocol"].ne(paper_row["protocol"]).any():
        return ours.iloc[:0]
    conditional = parse_bool(paper_row["conditional"] or "false", f"reported row {paper_row['key']}: conditional")
    same = (
        (ours["metric"] == paper_row["metric"])
        & (ours["protocol"] != paper_row["protocol"])
        & (ours["distiller"].astype(str) == paper_row["distiller"])
        & (ours["el"].map(lambda v: str(v).lower()) == str(parse_bool(paper_row["el"], "el")).lower())
        & (ours["conditional"].map(lambda v: str(v).lower()) == str(conditional).lower())
        & ours["key"].map(lambda k: "/aux-" not in str(k))
    )
    full = same & ours["key"].map(lambda k: "/emb" not in str(k))
    return ours[full] if full.any() else ours[same]


def _candidates(ours: pd.DataFrame, paper_row: pd.Series) -> pd.DataFrame:
    key = paper_row["match_key"]
    same_metric = ours["metric"] == paper_row["metric"]
    if key.startswith("claim/") or paper_row["batch_size"].strip():
        return ours[same_metric & (ours["key"] == key)]
    pattern = re.compile(re.escape(key) + r"(/bs\d+)?")  # rows without a batch: the teachers' own FIDs
    return ours[same_metric & ours["key"].map(lambda k: bool(pattern.fullmatch(str(k))))]


def make_diff(
    reported_path: str | Path, tables_dir: str | Path, tolerances_path: str | Path, out_dir: str | Path
) -> pd.DataFrame:
    """Write DIFF/diff.csv and DIFF/diff.md; return the diff table."""
    reported = read_reported(reported_path)
    tolerances = read_tolerances(tolerances_path)
    ours = our_rows(tables_dir)
    compared: set[int] = set()
    rows = []
    for _, p in tqdm(reported.iterrows(), total=len(reported), desc="diff", unit="row"):
        row = dict.fromkeys(DIFF_COLUMNS, math.nan)
        row.update(paper_key=p["key"], key=p["match_key"], metric=p["metric"], direction=p["direction"])
        row.update(paper=float(p["value"]) if p["value"].strip() else math.nan, paper_protocol=p["protocol"])
        row.update(source=p["source"], note="")
        cands = _candidates(ours, p)
        analogue = cands.empty and not (cands := _analogues(ours, p)).empty
        numbered = cands[cands["value"].notna()]
        if numbered.empty:
            row["status"] = "MISSING_OURS"
            if len(cands):  # our cell exists but has no number: this row accounts for it
                compared.update(cands.index)
                row.update(key=cands["key"].iloc[0], cell_id=";".join(map(str, cands["cell_id"])))
                row["note"] = "our cell has no number: status " + ",".join(map(str, cands["our_status"].unique()))
            rows.append(row)
            continue
        wanted = PAPER_PROTOCOL if p["key"].startswith("claim/") else p["protocol"]
        other = numbered["protocol"] != wanted
        pool = numbered[other == other.min()]  # the paper's protocol first, then the best number
        best = pool.loc[pool["value"].idxmax() if p["direction"] == "higher" else pool["value"].idxmin()]
        compared.add(best.name)
        row.update(key=best["key"], ours=float(best["value"]), our_protocol=best["protocol"])
        row.update(cell_id=best["cell_id"], table=best["table"], our_status=best["our_status"])
        if not pd.isna(best.get("n_seeds")):  # the seeds behind a setting's mean, or behind a claim's verdict
            row.update(n_seeds=best["n_seeds"], ours_ci_low=best["ci_low"], ours_ci_high=best["ci_high"])
        row["delta"] = row["ours"] - row["paper"]
        if len(numbered) > 1:
            row["note"] = f"best of {len(numbered)} of our settings: {', '.join(map(str, numbered['key']))}"
        if analogue:
            row["note"] = f"no cell of ours for this key; analogue under another protocol. {row['note']}"
        if best["protocol"] != wanted:
            row["status"] = "NOT_COMPARABLE"
            row["delta"] = math.nan  # a difference across protocols means nothing
            row["note"] = f"protocol {best['protocol']} is not the paper's {wanted}. " + row["note"]
        elif math.isnan(row["paper"]) or p["direction"] not in ("lower", "higher"):
            row["status"] = "NOT_COMPARABLE"
            row["note"] = "the paper gives no number or no direction to compare. " + row["note"]
        else:
            tol = tolerances.get(p["metric"], tolerances.get("default"))
            if tol is None:
                raise ValueError(f"{tolerances_path}: no tolerance for metric '{p['metric']}' and no 'default' entry")
            row["tolerance"] = tol[0] + tol[1] * abs(row["paper"])
            row["status"] = compare(p["value"], row["ours"], p["direction"], tol)
        rows.append(row)
    for i, o in ours.iterrows():
        if i not in compared:
            row = dict.fromkeys(DIFF_COLUMNS, math.nan)
            row.update(status="MISSING_PAPER", key=o["key"], metric=o["metric"], ours=o["value"])
            if not pd.isna(o.get("n_seeds")):
                row.update(n_seeds=o["n_seeds"], ours_ci_low=o["ci_low"], ours_ci_high=o["ci_high"])
            row.update(our_protocol=o["protocol"], cell_id=o["cell_id"], table=o["table"], our_status=o["our_status"])
            row.update(note="")
            rows.append(row)
    diff = pd.DataFrame(rows, columns=list(DIFF_COLUMNS))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(diff.to_csv(index=False).encode(), out_dir / "diff.csv")
    atomic_write_bytes(markdown(diff, reported_path, tables_dir).encode(), out_dir / "diff.md")
    return diff


def summary(diff: pd.DataFrame) -> dict[str, int]:
    return {s: int((diff["status"] == s).sum()) for s in STATUSES}


def markdown(diff: pd.DataFrame, reported_path, tables_dir) -> str:
    counts = summary(diff)
    lines = [
        "# Diff against the paper",
        "",
        f"Paper: `{reported_path}`; ours: `{tables_dir}`. "
        "NOT_COMPARABLE rows were measured under another protocol than the paper's (e.g. the miniature).",
        "",
        "**Summary:** " + ", ".join(f"{s} {n}" for s, n in counts.items()) + f" (total {len(diff)})",
        "",
        _text(diff.drop(columns=["source"])).to_markdown(index=False, disable_numparse=True),
    ]
    return "\n".join(lines) + "\n"


def _text(diff: pd.DataFrame) -> pd.DataFrame:
    """Numbers with 4 significant digits, empty cells for missing values."""
    shown = diff.astype(object)
    for col in ("paper", "ours", "ours_ci_low", "ours_ci_high", "delta", "tolerance"):
        shown[col] = ["" if pd.isna(v) else f"{float(v):.4g}" for v in diff[col]]
    return shown.where(shown.notna(), "")


def parse_fail_on(text: str | None) -> set[str]:
    names = {s.strip().upper() for s in (text or "").split(",") if s.strip()}
    unknown = sorted(names - set(STATUSES))
    if unknown:
        raise ValueError(f"--fail-on: unknown status(es) {', '.join(unknown)}; choose from {', '.join(STATUSES)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reported", required=True, help="config/paper/reported.csv")
    parser.add_argument("--tables", required=True, help="tables folder written by `eldistill tables`")
    parser.add_argument("--tolerances", required=True, help="YAML: metric -> {abs, rel}")
    parser.add_argument("--out", required=True, help="diff folder (results/<scale>/diff)")
    parser.add_argument("--fail-on", default="", help="comma-separated statuses that make the exit code 1")


def run(args: argparse.Namespace) -> int:
    fail_on = parse_fail_on(args.fail_on)
    diff = make_diff(args.reported, args.tables, args.tolerances, args.out)
    counts = summary(diff)
    print("diff: " + ", ".join(f"{s} {n}" for s, n in counts.items()) + f" -> {args.out}")
    failing = {s: counts[s] for s in fail_on if counts[s]}
    if failing:
        print(f"diff: failing on {', '.join(f'{s} ({n})' for s, n in sorted(failing.items()))}")
        return 1
    return 0
