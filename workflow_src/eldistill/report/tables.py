"""`eldistill tables`: join GRID.csv with every cell's results into one long table per paper table.

Inputs, per grid row (cell `c`):
    RUNS/c/fid.jsonl       the `final` record gives `fid` and its protocol columns; the minimum over the
                           `snapshot` records (same protocol, first seed range of each checkpoint) gives
                           `fid_best_snapshot`
    RUNS/c/metrics.jsonl   `images_seen` / `iterations` of the last line, when fid.jsonl has no final record
    RUNS/c/config.json     the cell's teacher (its file name enters the key, see report.common)
    RUNS/c/samples.png     copied to TABLES/samples/c.png
    BENCHMARKS/c.tsv       Snakemake's benchmark: `s` (mean over repeats) = wall seconds; gpu_seconds = s x
                           the grid's optional `gpus` column (else s)

Outputs in TABLES/: <table>.csv|.md|.tex for each `table` of the grid (one row per grid row; the .md also
gives each setting's mean over seeds with its 95 % interval), cells.csv (all of them), convergence.csv (one
row per fid.jsonl record per grid row), summary.csv (one row per experiment and setting: FID mean, SD and
95 % t-interval over the training seeds), el_effect.csv (each EL-on minus EL-off difference, paired by seed,
with its interval), claims.csv (a verdict per claim and distiller, see report.claims, plus the paper's claim
numbers computed from our cells), gradvar.csv (the gradvar verb's CSV, tidied) and samples/.
A cell without results is a row with NaN fid and a `status`:
    ok                 a final FID record exists
    protocol_mismatch  the final record's protocol differs from the grid's planned one (numbers kept)
    no_final           only snapshot records (fid is NaN; fid_best_snapshot may be set)
    no_fid             the run folder exists but fid.jsonl has no record
    not_run            no run folder
    running, evaluating, failed   (with `states`, from `eldistill progress`) a job is under way, or its log
                       (column `log`) shows it failed
    cell_id_mismatch   fid.jsonl records name another cell (numbers dropped)
    fid_not_finite     the final record's FID is NaN or infinite (a collapsed run; fid is NaN)
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from eldistill.grid import GRID_COLUMNS
from eldistill.io import atomic_write_bytes, read_jsonl
from eldistill.report.claims import make_claims, paired_el_differences, summarize
from eldistill.report.common import (
    NO_AUX,
    PROTOCOL_COLUMNS,
    RESERVED_TABLES,
    cell_key,
    is_missing,
    parse_bool,
    protocol_note,
    read_csv,
)

# the columns eldistill.grid writes; `gpus` and `seed` are optional (old and hand-made grids lack them)
OPTIONAL_GRID_COLUMNS = ("gpus", "seed")
REQUIRED_GRID_COLUMNS = tuple(c for c in GRID_COLUMNS if c not in OPTIONAL_GRID_COLUMNS)
NUMERIC_GRID = ("resolution", "el_weight", "batch", "n_archs", "inits_per_arch", "total_images", "gpus", "seed")
RESULT_COLUMNS = (
    "fid",
    "fid_best_snapshot",
    *PROTOCOL_COLUMNS,
    "images_seen",
    "iterations",
    "wall_seconds",
    "gpu_seconds",
    "teacher",
    "samples",
    "key",
    "status",
    "log",
)
DISPLAY_COLUMNS = (
    "experiment",
    "dataset",
    "resolution",
    "conditional",
    "distiller",
    "el",
    "batch",
    "n_archs",
    "inits_per_arch",
    "aux_loss",
    "seed",
    "fid",
    "fid_best_snapshot",
    "images_seen",
    "wall_seconds",
    "gpu_seconds",
    "protocol",
    "num_samples",
    "aggregation",
    "status",
    "log",
)
CONVERGENCE_CELL_COLUMNS = (
    "experiment",
    "table",
    "cell_id",
    "dataset",
    "resolution",
    "conditional",
    "distiller",
    "el",
    "batch",
    "n_archs",
    "inits_per_arch",
    "aux_loss",
    "total_images",
    "seed",
    "key",
)
CONVERGENCE_RECORD_COLUMNS = ("kind", "images_seen", "iterations", "fid", *PROTOCOL_COLUMNS, "seeds", "checkpoint")
NO_RESULT = ("not_run", "no_fid", "no_final")  # statuses a campaign state (running, failed, ...) may refine
GRADVAR_ALIASES = {
    "k": "K",
    "num_embedders": "K",
    "n_embedders": "K",
    "b": "batch",
    "batch_size": "batch",
    "var": "variance",
    "grad_var": "variance",
    "gradient_variance": "variance",
}


# --- reading ------------------------------------------------------------------------------------------
def read_grid(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"grid file not found: {path}")
    grid = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in REQUIRED_GRID_COLUMNS if c not in grid.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    if grid.empty:
        raise ValueError(f"{path}: the grid has no rows")
    for col in NUMERIC_GRID:
        if col in grid.columns:
            grid[col] = [_number(v, f"{path}: column '{col}', row {i + 2}") for i, v in enumerate(grid[col])]
    for col in ("conditional", "el"):
        grid[col] = [parse_bool(v, f"{path}: column '{col}', row {i + 2}") for i, v in enumerate(grid[col])]
    for i, (cell_id, table) in enumerate(zip(grid["cell_id"], grid["table"])):
        if not cell_id.strip():
            raise ValueError(f"{path}: column 'cell_id', row {i + 2} is empty")
        if not table.strip() or table in RESERVED_TABLES or "/" in table:
            raise ValueError(
                f"{path}: column 'table', row {i + 2} is {table!r}; it must be a file name other than "
                f"{', '.join(RESERVED_TABLES)}"
            )
    return grid


def _number(value: str, where: str) -> float:
    if str(value).strip() == "":
        return math.nan
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{where}: not a number: {value!r}") from None


def read_cell(run_dir: Path, cell_id: str, planned_protocol: str) -> tuple[dict, list[dict]]:
    """The result columns of one cell and its fid.jsonl records (see the module docstring)."""
    out = {c: math.nan for c in RESULT_COLUMNS}
    out.update(teacher="", samples="", log="", protocol=planned_protocol)
    if not run_dir.is_dir():
        out["status"] = "not_run"
        return out, []
    config_path = run_dir / "config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{config_path}: not valid JSON ({e})") from None
        if not isinstance(config, dict):
            raise ValueError(f"{config_path}: expected the cell's JSON object, got {type(config).__name__}")
        out["teacher"] = Path(str(config.get("teacher") or "")).stem
    fid_path = run_dir / "fid.jsonl"
    records = read_jsonl(fid_path) if fid_path.is_file() else []
    for i, record in enumerate(records):
        check_record(record, f"{fid_path}: record {i + 1}")
    if any(r.get("cell_id") not in (None, cell_id) for r in records):
        out["status"] = "cell_id_mismatch"
        return out, []
    records = _first_per_checkpoint(records)
    finals = [r for r in records if r.get("kind") == "final"]
    snapshots = [r for r in records if r.get("kind") == "snapshot"]
    source = finals[-1] if finals else (snapshots[-1] if snapshots else None)
    if source is not None:
        for col in PROTOCOL_COLUMNS:
            out[col] = source.get(col, math.nan)
        same = [_float(r.get("fid")) for r in snapshots if r.get("protocol") == out["protocol"]]
        same = [f for f in same if not math.isnan(f)]
        out["fid_best_snapshot"] = min(same) if same else math.nan
    if finals:
        out["fid"] = _float(finals[-1].get("fid"))
        out["images_seen"] = _float(finals[-1].get("images_seen"))
        out["iterations"] = _float(finals[-1].get("iterations"))
        out["status"] = "ok" if out["protocol"] == planned_protocol else "protocol_mismatch"
        if not math.isfinite(out["fid"]):
            out["status"], out["fid"] = "fid_not_finite", math.nan  # a collapsed generator: no number to show
    else:
        out["status"] = "no_final" if records else "no_fid"
        metrics_path = run_dir / "metrics.jsonl"
        last = read_jsonl(metrics_path)[-1:] if metrics_path.is_file() else []
        if last:
            out["images_seen"] = _float(last[0].get("images_seen"))
            out["iterations"] = _float(last[0].get("iterations"))
    return out, records


# What a number of a fid.jsonl record can physically be: FID is a squared distance (>= 0; NaN or inf marks a
# collapsed generator), the Inception Score exp(E KL) >= 1, counts are whole and non-negative.
def check_record(record, where: str) -> None:
    """Refuse a fid.jsonl record whose numbers no evaluation can produce (hand-edited or damaged); the message
    names the file, the record and the key."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key, low, what in (("fid", 0.0, "an FID (a squared distance)"), ("is_mean", 1.0, "an Inception Score")):
        if key not in record or record[key] is None:
            continue
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: '{key}' = {value!r} is not a number")
        if not math.isnan(value) and value < low:
            raise ValueError(f"{where}: '{key}' = {value!r} is impossible for {what}, which is >= {low:g}")
    for key in ("num_samples", "images_seen", "iterations"):
        value = record.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{where}: '{key}' = {value!r} must be a non-negative integer")


def _first_per_checkpoint(records: list[dict]) -> list[dict]:
    """One snapshot record per checkpoint: min-of-3-seeds evaluates the final generator on two more seed ranges
    (the final record holds their minimum), so curves and fid_best_snapshot use the first seed range, like every
    other snapshot. A checkpoint rewritten since (a retrained cell) counts only with its current content: records
    whose checkpoint_digest differs from the latest one for that path are stale and dropped."""
    latest = {r.get("checkpoint"): r.get("checkpoint_digest") for r in records if r.get("checkpoint") is not None}
    seen, kept = set(), []
    for r in records:
        checkpoint = r.get("checkpoint")
        if r.get("kind") == "snapshot" and checkpoint is not None:
            if checkpoint in seen or r.get("checkpoint_digest") != latest[checkpoint]:
                continue
            seen.add(checkpoint)
        kept.append(r)
    return kept


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def read_benchmark(path: Path) -> float:
    """Mean wall seconds (`s`) over the rows of a Snakemake benchmark TSV; NaN when absent."""
    if not path.is_file():
        return math.nan
    bench = pd.read_csv(path, sep="\t")
    if "s" not in bench.columns:
        raise ValueError(f"{path}: benchmark file has no 's' column")
    return float(bench["s"].mean()) if len(bench) else math.nan


def tidy_gradvar(path: str | Path) -> pd.DataFrame:
    """The gradvar verb's CSV with canonical column names K, batch, variance (other columns kept)."""
    df = read_csv(path, what="gradvar")
    df = df.rename(columns=lambda c: str(c).strip()).rename(
        columns=lambda c: GRADVAR_ALIASES.get(c.lower(), c if c == "K" else c.lower())
    )
    missing = [c for c in ("K", "batch", "variance") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing gradvar column(s) {', '.join(missing)} (after aliases {GRADVAR_ALIASES})")
    for col in ("K", "batch", "variance"):
        values = pd.to_numeric(df[col], errors="coerce")
        if values.isna().any():
            raise ValueError(f"{path}: column '{col}' has a missing or non-numeric value")
        df[col] = values
    return df.sort_values(["K", "batch"], kind="stable").reset_index(drop=True)


# --- claims -------------------------------------------------------------------------------------------
def _curve(records: pd.DataFrame) -> pd.DataFrame:
    """FID against images seen: the snapshot records, or the final record when there is no snapshot."""
    snaps = records[records["kind"] == "snapshot"]
    curve = snaps if len(snaps) else records[records["kind"] == "final"]
    curve = curve.dropna(subset=["fid", "images_seen"]).drop_duplicates("images_seen")  # snapshot = generator.pt
    return curve.sort_values("images_seen")


def iteration_reduction(cells: pd.DataFrame, convergence: pd.DataFrame) -> dict | None:
    """Largest % fewer images (= iterations at equal batch) EL needs to reach its EL-off twin's last FID.

    Twins share experiment, dataset, resolution, conditional, distiller, batch, total_images and auxiliary loss.
    """
    # aux_loss "el" names EL itself (the aux-loss comparison): the twin of an EL cell has aux_loss "none"
    aux = cells["aux_loss"].map(lambda a: "none" if is_missing(a) or str(a).lower() in NO_AUX else str(a))
    twin = ["experiment", "dataset", "resolution", "conditional", "distiller", "batch", "total_images"]
    found = []
    for _, group in cells.assign(_aux=aux).groupby([*twin, "_aux"], dropna=False, sort=False):
        for _, off in group[~group["el"]].iterrows():
            off_curve = _curve(convergence[convergence["cell_id"] == off["cell_id"]])
            if off_curve.empty:
                continue
            target, off_images, protocol = off_curve.iloc[-1][["fid", "images_seen", "protocol"]]
            for _, on in group[group["el"]].iterrows():
                on_curve = _curve(convergence[convergence["cell_id"] == on["cell_id"]])
                on_curve = on_curve[(on_curve["protocol"] == protocol) & (on_curve["fid"] <= target)]
                if len(on_curve) and off_images > 0:
                    reduction = 100.0 * (1.0 - on_curve["images_seen"].iloc[0] / off_images)
                    found.append((reduction, protocol, f"{on['cell_id']} vs {off['cell_id']}: {reduction:.1f}%"))
    if not found:
        return None
    best = max(found, key=lambda f: f[0])
    return {
        "key": "claim/iterations",
        "metric": "max_iteration_reduction_pct",
        "value": best[0],
        "protocol": best[1],
        "detail": "; ".join(f[2] for f in found),
    }


def diversity_gain(cells: pd.DataFrame) -> dict | None:
    """% lower FID of the 4 archs x 4 inits ensemble than one architecture (4 inits, else its most inits),
    averaged over the groups (same experiment, dataset, distiller, batch, total_images) that have both."""
    el = cells[cells["el"] & cells["fid"].notna()]
    group_cols = ["experiment", "dataset", "resolution", "conditional", "distiller", "batch", "total_images"]
    found = []
    for _, group in el.groupby(group_cols, dropna=False, sort=False):
        full = group[(group["n_archs"] == 4) & (group["inits_per_arch"] == 4)]
        single = group[group["n_archs"] == 1]
        if full.empty or single.empty:
            continue
        inits = 4 if (single["inits_per_arch"] == 4).any() else single["inits_per_arch"].max()
        single, full = single[single["inits_per_arch"] == inits].iloc[0], full.iloc[0]
        if full["protocol"] != single["protocol"] or single["fid"] <= 0:
            continue
        gain = 100.0 * (single["fid"] - full["fid"]) / single["fid"]
        found.append((gain, full["protocol"], f"{full['cell_id']} vs {single['cell_id']}: {gain:.1f}%"))
    if not found:
        return None
    return {
        "key": "claim/diversity",
        "metric": "fid_gain_4arch4init_vs_1arch_pct",
        "value": float(np.mean([f[0] for f in found])),
        "protocol": ",".join(sorted({f[1] for f in found})),
        "detail": "; ".join(f[2] for f in found),
    }


def _distinct(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per cell with a FID (a cell two experiments share counts once), no auxiliary loss other than EL."""
    aux = cells["aux_loss"].map(lambda a: is_missing(a) or str(a).lower() in NO_AUX)
    return cells[cells["fid"].notna() & aux].drop_duplicates("cell_id")


def small_batch_degradation(cells: pd.DataFrame) -> dict | None:
    """claim/small-batch: how much less FID degrades with EL when the batch shrinks. Per group (dataset, distiller,
    length) with EL off and on at its smallest and its largest batch: degradation = 100 (FID_small / FID_large - 1)
    for each; the value is degradation(EL off) - degradation(EL on) in percentage points (positive: EL degrades
    more gracefully), averaged over the groups; `detail` gives the four FIDs of each."""
    group_cols = ["dataset", "resolution", "conditional", "distiller", "total_images", "protocol"]
    found = []
    for _, group in _distinct(cells).groupby(group_cols, dropna=False, sort=False):
        small, large = group["batch"].min(), group["batch"].max()
        fids = {}
        for el in (False, True):
            for name, batch in (("small", small), ("large", large)):
                match = group[(group["el"] == el) & (group["batch"] == batch)]
                if len(match):
                    fids[(el, name)] = float(match["fid"].min())
        if small == large or len(fids) < 4 or min(fids.values()) <= 0:
            continue
        off = 100.0 * (fids[(False, "small")] / fids[(False, "large")] - 1.0)
        on = 100.0 * (fids[(True, "small")] / fids[(True, "large")] - 1.0)
        first = group.iloc[0]
        found.append(
            (
                off - on,
                first["protocol"],
                f"{first['dataset']} {first['distiller']} batch {small:.0f} vs {large:.0f}: FID EL off "
                f"{fids[(False, 'small')]:.4g} vs {fids[(False, 'large')]:.4g} ({off:+.1f}%), EL on "
                f"{fids[(True, 'small')]:.4g} vs {fids[(True, 'large')]:.4g} ({on:+.1f}%)",
            )
        )
    if not found:
        return None
    return {
        "key": "claim/small-batch",
        "metric": "graceful_degradation",
        "value": float(np.mean([f[0] for f in found])),
        "protocol": ",".join(sorted({f[1] for f in found})),
        "detail": "; ".join(f[2] for f in found),
    }


def dmd_batch_needed(cells: pd.DataFrame) -> dict | None:
    """claim/dmd-batch: the batch DMD without EL needs to reach the FID of DMD+EL at its smallest batch.
    Per group (dataset, DMD recipe, length): the smallest EL-off batch whose FID is at most DMD+EL's; inf
    when no EL-off batch tried gets there (DMD+EL at the small batch beats DMD at every batch). The value is
    the largest over the groups; `detail` gives every FID it rests on."""
    dmd = _distinct(cells)
    dmd = dmd[dmd["distiller"].astype(str).str.startswith("dmd")]
    group_cols = ["dataset", "resolution", "conditional", "distiller", "protocol"]
    found = []
    for _, group in dmd.groupby(group_cols, dropna=False, sort=False):
        on, off = group[group["el"]], group[~group["el"]].sort_values("batch")
        if on.empty or off.empty:
            continue
        el = on.loc[on["batch"].idxmin()]
        reached = off[off["fid"] <= el["fid"]]
        needed = float(reached["batch"].iloc[0]) if len(reached) else math.inf
        offs = ", ".join(f"batch {b:.0f}: {f:.4g}" for b, f in zip(off["batch"], off["fid"]))
        shown = f"> {off['batch'].max():.0f}" if math.isinf(needed) else f"{needed:.0f}"
        found.append(
            (
                needed,
                el["protocol"],
                f"{el['dataset']} {el['distiller']}+EL at batch {el['batch']:.0f}: FID {el['fid']:.4g}; without EL "
                f"{offs}; needed batch {shown}",
            )
        )
    if not found:
        return None
    return {
        "key": "claim/dmd-batch",
        "metric": "batch_size_vs_dmd",
        "value": max(f[0] for f in found),
        "protocol": ",".join(sorted({f[1] for f in found})),
        "detail": "; ".join(f[2] for f in found),
    }


# --- writing ------------------------------------------------------------------------------------------
def _display(df: pd.DataFrame) -> pd.DataFrame:
    """The columns shown in Markdown/LaTeX, as text: counts as integers, FIDs with 3 decimals (4 significant
    digits below 1), '' if missing."""
    shown = df[list(DISPLAY_COLUMNS)].copy()
    formats = {"wall_seconds": "{:.0f}", "gpu_seconds": "{:.0f}"}
    for col in ("resolution", "batch", "n_archs", "inits_per_arch", "seed", "images_seen", "num_samples"):
        formats[col] = "{:.0f}"
    for col, fmt in formats.items():
        shown[col] = [fmt.format(float(v)) if not is_missing(v) and not pd.isna(v) else "" for v in shown[col]]
    for col in ("fid", "fid_best_snapshot"):  # the paper's 3 decimals; small miniature FIDs keep 4 digits
        shown[col] = ["" if pd.isna(v) else f"{v:.3f}" if abs(v) >= 1 else f"{v:.4g}" for v in df[col].astype(float)]
    return shown.astype(object).where(shown.notna(), "")


def _markdown(name: str, df: pd.DataFrame) -> str:
    protocols = df.loc[df["feature_net"].notna(), list(PROTOCOL_COLUMNS)].drop_duplicates()
    lines = [f"# Table `{name}`", "", protocol_note(df["protocol"]), ""]
    for _, p in protocols.iterrows():
        samples = "" if pd.isna(p["num_samples"]) else f"{float(p['num_samples']):.0f}"
        lines.append(
            f"- protocol = {p['protocol']}, feature_net = {p['feature_net']}, num_samples = {samples}, "
            f"reference = {p['reference']}, aggregation = {p['aggregation']}"
        )
    ok = int((df["status"] == "ok").sum())
    summary = summarize(df)
    lines += ["", f"{len(df)} cells, {ok} with a final FID (status `ok`).", ""]
    lines += ["## Mean over seeds (95 % t-interval)", "", _summary_markdown(summary), ""]
    lines += ["## Every cell", ""]
    lines.append(_display(df).to_markdown(index=False, disable_numparse=True))
    return "\n".join(lines) + "\n"


def _fid_text(v: float) -> str:
    return "" if pd.isna(v) else f"{v:.3f}" if abs(v) >= 1 else f"{v:.4g}"


def _summary_markdown(summary: pd.DataFrame) -> str:
    """Settings that vary, then FID mean [low, high] over seeds (n seeds)."""
    shown = pd.DataFrame(
        {
            "experiment": summary["experiment"],
            "key": summary["key"],
            "seeds": summary["n_seeds"].astype(int),
            "FID mean": summary["fid_mean"].map(_fid_text),
            "95 % interval": [
                f"[{_fid_text(lo)}, {_fid_text(hi)}]" if not pd.isna(lo) else "one seed"
                for lo, hi in zip(summary["fid_ci_low"], summary["fid_ci_high"])
            ],
            "SD": summary["fid_sd"].map(_fid_text),
        }
    )
    return shown.to_markdown(index=False, disable_numparse=True)


def _latex(name: str, df: pd.DataFrame) -> str:
    """A paper-width table: the settings that vary, FIDs, cost; the protocol in the caption (and as a column
    when the rows mix protocols)."""
    text = _display(df)
    shown = pd.DataFrame(
        {
            "dataset": text["dataset"] + text["resolution"].map(lambda r: f" {r}" if r else ""),
            "distiller": text["distiller"],
            "EL": df["el"].map(lambda e: "on" if e else "off").to_numpy(),
            "batch": text["batch"],
            "embedders": [
                f"{a}x{i}" if e and a else "" for e, a, i in zip(df["el"], text["n_archs"], text["inits_per_arch"])
            ],
            "aux": text["aux_loss"],
            "FID": text["fid"],
            "best snapshot": text["fid_best_snapshot"],
            "images": text["images_seen"],
            "GPU h": [f"{v / 3600:.2f}" if not pd.isna(v) else "" for v in df["gpu_seconds"]],
            "status": text["status"],
        }
    )
    if df["protocol"].nunique() > 1:
        shown["protocol"] = text["protocol"].to_numpy()
    return shown.to_latex(
        index=False,
        escape=True,
        caption=f"{name}. {protocol_note(df['protocol'])}",
        label=f"tab:{name}",
        longtable=len(df) > 40,
    )


def _write(content: str | pd.DataFrame, path: Path) -> None:
    """Atomically: a killed job never leaves a half-written table."""
    text = content.to_csv(index=False) if isinstance(content, pd.DataFrame) else content
    atomic_write_bytes(text.encode(), path)


def make_tables(
    grid_path: str | Path,
    runs_dir: str | Path,
    out_dir: str | Path,
    benchmarks_dir: str | Path | None = None,
    gradvar_path: str | Path | None = None,
    learned_below_fid: float | None = None,
    states: dict[str, dict] | None = None,
) -> pd.DataFrame:
    """Write every table (module docstring) and return the cells table (all grid rows). A distiller whose
    EL-off mean FID is not below `learned_below_fid` did not learn: its claims are `excluded`. `states` (cell_id ->
    {"state", "log"}, from eldistill.report.progress) marks the cells without a final FID: running, evaluating,
    failed (with the log to read) or not_run."""
    grid = read_grid(grid_path)
    if "seed" not in grid.columns:
        grid["seed"] = 0.0  # a grid without seeds: every cell is its setting's only repeat
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    rows, conv = [], []
    cache: dict[str, tuple[dict, list[dict]]] = {}
    for _, g in tqdm(grid.iterrows(), total=len(grid), desc="tables", unit="row"):
        cell_id = g["cell_id"]
        if cell_id not in cache:
            cache[cell_id] = read_cell(runs_dir / cell_id, cell_id, g["protocol"])
            sample = runs_dir / cell_id / "samples.png"
            if sample.is_file():
                atomic_write_bytes(sample.read_bytes(), out_dir / "samples" / f"{cell_id}.png")
        result, records = cache[cell_id]
        row = {**g.to_dict(), **result}
        if states and cell_id in states and result["status"] in NO_RESULT:
            row.update(status=states[cell_id]["state"], log=states[cell_id]["log"])
        if (runs_dir / cell_id / "samples.png").is_file():
            row["samples"] = f"samples/{cell_id}.png"
        wall = read_benchmark(Path(benchmarks_dir) / f"{cell_id}.tsv") if benchmarks_dir else math.nan
        gpus = g.get("gpus", math.nan)
        row["wall_seconds"] = wall
        row["gpu_seconds"] = wall * (gpus if not is_missing(gpus) else 1.0)
        row["key"] = cell_key(
            g["dataset"], g["resolution"], g["conditional"], g["distiller"], g["el"], g["batch"],
            g["n_archs"], g["inits_per_arch"], g["aux_loss"], row["teacher"],
        )  # fmt: skip
        rows.append(row)
        for r in records:
            conv.append(
                {**{c: row[c] for c in CONVERGENCE_CELL_COLUMNS}, **{c: r.get(c) for c in CONVERGENCE_RECORD_COLUMNS}}
            )
    columns = list(REQUIRED_GRID_COLUMNS) + [c for c in grid.columns if c not in REQUIRED_GRID_COLUMNS]
    columns += [c for c in RESULT_COLUMNS if c not in columns]
    cells = pd.DataFrame(rows, columns=columns)
    cells["el"] = cells["el"].astype(bool)
    convergence = pd.DataFrame(conv, columns=list(CONVERGENCE_CELL_COLUMNS) + list(CONVERGENCE_RECORD_COLUMNS))
    for col in ("fid", "images_seen", "iterations"):
        convergence[col] = pd.to_numeric(convergence[col], errors="coerce")

    for name in dict.fromkeys(cells["table"]):  # first-appearance order
        df = cells[cells["table"] == name]
        _write(df, out_dir / f"{name}.csv")
        _write(_markdown(name, df), out_dir / f"{name}.md")
        _write(_latex(name, df), out_dir / f"{name}.tex")
    _write(cells, out_dir / "cells.csv")
    _write(convergence, out_dir / "convergence.csv")
    _write(summarize(cells), out_dir / "summary.csv")
    _write(paired_el_differences(cells), out_dir / "el_effect.csv")
    verdicts = make_claims(cells, convergence, learned_below_fid)
    # the paper's claim numbers (best pair; what the diff compares with the paper), next to the verdicts
    # one row per setting with its mean over seeds, so a claim number never rests on one lucky seed
    means = cells.assign(fid=cells.groupby(["experiment", "key"], dropna=False)["fid"].transform("mean"))
    means = means.drop_duplicates(["experiment", "key"])
    paper = [iteration_reduction(cells, convergence), diversity_gain(means)]
    paper = [c for c in (*paper, small_batch_degradation(means), dmd_batch_needed(means)) if c]
    paper = pd.DataFrame(paper, columns=["key", "metric", "value", "protocol", "detail"]).assign(
        claim=lambda d: d["key"].str.removeprefix("claim/"), test="best pair (the paper's number)", verdict=""
    )
    claims = pd.concat([verdicts, paper.reindex(columns=verdicts.columns)], ignore_index=True)
    _write(claims if len(claims) else verdicts, out_dir / "claims.csv")
    if gradvar_path:
        _write(tidy_gradvar(gradvar_path), out_dir / "gradvar.csv")
    return cells


# --- CLI ----------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grid", required=True, help="GRID.csv written by `eldistill grid`")
    parser.add_argument("--runs", required=True, help="results/<scale>/runs")
    parser.add_argument("--benchmarks", help="folder of Snakemake benchmark TSVs, <cell_id>.tsv")
    parser.add_argument("--gradvar", help="CSV written by `eldistill gradvar`")
    parser.add_argument("--out", required=True, help="tables folder (results/<scale>/tables)")
    parser.add_argument(
        "--learned-below-fid",
        type=float,
        default=None,
        help="a distiller whose EL-off mean FID is not below this did not learn; its claims are 'excluded'",
    )


def run(args: argparse.Namespace) -> int:
    cells = make_tables(args.grid, args.runs, args.out, args.benchmarks, args.gradvar, args.learned_below_fid)
    ok = int((cells["status"] == "ok").sum())
    print(f"tables: {len(cells)} rows, {ok} with a final FID -> {args.out}")
    return 0
