"""`eldistill progress`: where a campaign stands, at any time, without touching its running jobs.

It reads only files (the run folders, the job logs, Snakemake's benchmarks and its `.snakemake/incomplete/`
markers) and writes only under its own output folder, so it needs no Snakemake lock:

    eldistill progress --configfile config/paper.yaml            # while `snakemake --profile slurm all_tables` runs
    snakemake --nolock progress                                  # the same, as a Snakemake target

Output (default results/<scale>/progress/): tables/ (every paper table, unfinished cells marked), diff/ (the paper
diff of what exists) and summary.txt, the one-screen summary it also prints. The Snakefile's `onerror` handler
calls `write_progress` with out = results/<scale>, so a campaign in which a cell failed still ends with its
tables, its diff and its summary in the usual places (dated 1970, so that the next run completes them).

State of each cell (the `status` of a table row when the cell has no final FID; `log` names the log to read):
    running     a job is writing its generator (Snakemake marked the output incomplete; after a controller crash
                the marker stays until the rerun, which resumes the cell from its state folder)
    evaluating  the generator exists and the evaluation job is under way
    failed      the job's log exists but its output does not and no job is under way
    not_run     nothing has started
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import math
import os
import tempfile
from pathlib import Path

import pandas as pd

from eldistill.grid import REPO, ConfigError, Grid, build_grid, load_config, write_grid_csv
from eldistill.io import atomic_write_bytes
from eldistill.report.diff import make_diff, summary
from eldistill.report.tables import make_tables, read_benchmark

UNFINISHED = ("running", "evaluating", "failed", "not_run")


def _incomplete(workdir: Path, path: str) -> dict | None:
    """Snakemake's marker of an output whose job started and has not finished (its record holds the external,
    e.g. SLURM, job id); None when there is none. Snakemake names it by the urlsafe base64 of the path."""
    name = base64.urlsafe_b64encode(path.encode()).decode()
    marker = workdir / ".snakemake" / "incomplete" / name
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text() or "{}")
    except json.JSONDecodeError:
        return {}


def cell_states(grid: Grid, workdir: str | Path = ".") -> dict[str, dict]:
    """cell_id -> {"state", "log", "job"} for every cell of the grid (see the module docstring)."""
    workdir = Path(workdir)
    results = f"results/{grid.scale}"
    states = {}
    for cell_id in grid.cells:
        generator = f"{results}/runs/{cell_id}/generator.pt"
        fid = f"{results}/runs/{cell_id}/fid.jsonl"
        logs = {step: f"{results}/logs/{step}/{cell_id}.log" for step in ("distill", "evaluate")}
        gen_marker, fid_marker = _incomplete(workdir, generator), _incomplete(workdir, fid)
        state, log, job = "not_run", "", None
        if gen_marker is not None:
            state, log, job = "running", logs["distill"], gen_marker.get("external_jobid")
        elif (workdir / generator).is_file():
            if fid_marker is not None:
                state, log, job = "evaluating", logs["evaluate"], fid_marker.get("external_jobid")
            elif (workdir / fid).is_file():
                state = "done"
            elif (workdir / logs["evaluate"]).is_file():
                state, log = "failed", logs["evaluate"]
            else:
                state = "trained"  # waiting for its evaluation (or a SiD2A start, which has none)
        elif (workdir / logs["distill"]).is_file():
            state, log = "failed", logs["distill"]
        states[cell_id] = {"state": state, "log": log, "job": job}
    return states


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:110] if lines else "(empty log)"


def gpu_hours(grid: Grid, states: dict[str, dict], benchmarks: Path) -> tuple[float, float]:
    """(spent, left): spent = wall time x GPUs of the finished distillation jobs (Snakemake's benchmarks); left =
    the runtime x GPUs the unfinished cells ask SLURM for (an upper bound: runs may stop earlier)."""
    spent = left = 0.0
    for cell_id, plan in grid.plans.items():
        wall = read_benchmark(benchmarks / f"{cell_id}.tsv")
        if not math.isnan(wall):
            spent += wall * plan["gpus"] / 3600
        if states[cell_id]["state"] in ("running", "failed", "not_run"):  # every segment once, as `eldistill grid`
            left += plan["gpus"] * plan.get("segments", 1) * plan["runtime_min"] / 60
    return spent, left


def summary_text(grid: Grid, states: dict[str, dict], spent: float, left: float, out: Path, diff, workdir) -> str:
    counts = pd.Series([s["state"] for s in states.values()]).value_counts()
    order = ("done", "trained", "evaluating", "running", "failed", "not_run")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"eldistill progress: results/{grid.scale}, {now}",
        f"cells: {len(states)} | " + ", ".join(f"{name} {int(counts.get(name, 0))}" for name in order),
        f"GPU-hours: spent {spent:.1f} (finished distillation jobs), left <= {left:.1f} (asked by unfinished cells)",
    ]
    for state in ("failed", "running", "evaluating"):
        cells = sorted(c for c, s in states.items() if s["state"] == state)
        if cells:
            lines.append(f"{state}:")
        for cell_id in cells[:8]:
            s, labels = states[cell_id], grid.cells[cell_id].labels
            where = f" (job {s['job']})" if s["job"] else ""
            tail = f"  | {_last_line(Path(workdir) / s['log'])}" if state == "failed" else ""
            lines.append(f"  {cell_id} {labels['teacher']}{where}: {s['log']}{tail}")
        if len(cells) > 8:
            lines.append(f"  ... and {len(cells) - 8} more (tables/cells.csv, columns status and log)")
    if diff is not None:
        lines.append("paper diff: " + ", ".join(f"{k} {v}" for k, v in summary(diff).items() if v))
    lines.append(f"tables: {out / 'tables'}; diff: {out / 'diff' / 'diff.csv'}")
    return "\n".join(lines) + "\n"


def _repo_path(path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else REPO / path


def _mark_stale(folder: Path) -> None:
    """Date every file (and folder) under `folder` to 1970: Snakemake then sees these tables as older than any
    cell's result and rebuilds them, training what is missing, on the next run. Left with a fresh date they
    would look complete and the failed cells would never be retried."""
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (1, 1), follow_symlinks=False)  # 1, not 0: Snakemake reads 0 as "no time"


def write_progress(grid: Grid, out: str | Path | None = None, workdir: str | Path = ".", stale: bool = False) -> str:
    """Write OUT/tables, OUT/diff and OUT/summary.txt from what exists under WORKDIR/results/<scale>; returns the
    summary text. Never fails on a cell's files: an unreadable cell is a row with its status. `stale` (the
    Snakefile's onerror, writing the workflow's own tables) dates the tables and the diff to 1970."""
    workdir = Path(workdir)
    results = workdir / "results" / grid.scale
    out = Path(out) if out is not None else results / "progress"
    if not out.is_absolute():
        out = workdir / out
    states = cell_states(grid, workdir)
    gradvar = results / "gradvar" / "gradvar.csv"
    with tempfile.TemporaryDirectory() as tmp:  # the grid rule owns results/<scale>/grid.csv
        make_tables(
            write_grid_csv(grid.rows, Path(tmp) / "grid.csv"),
            results / "runs",
            out / "tables",
            results / "benchmarks" / "distill",
            gradvar if gradvar.is_file() else None,
            (grid.config.get("claims") or {}).get("learned_below_fid"),
            states={c: s for c, s in states.items() if s["state"] in UNFINISHED},
        )
    config = grid.config
    diff = make_diff(_repo_path(config["reported"]), out / "tables", _repo_path(config["tolerances"]), out / "diff")
    spent, left = gpu_hours(grid, states, results / "benchmarks" / "distill")
    shown = out.relative_to(workdir) if out.is_relative_to(workdir) else out
    text = summary_text(grid, states, spent, left, shown, diff, workdir)
    atomic_write_bytes(text.encode(), out / "summary.txt")
    if stale:
        _mark_stale(out / "tables")
        _mark_stale(out / "diff")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--configfile",
        nargs="+",
        default=[str(REPO / "config" / "config.yaml")],
        help="the campaign's config file(s), as given to Snakemake (later ones overlay earlier ones)",
    )
    parser.add_argument("--directory", default=".", help="the campaign's working directory (Snakemake's -d)")
    parser.add_argument("--out", default=None, help="output folder (default results/<scale>/progress)")


def run(args: argparse.Namespace) -> int:
    try:
        grid = build_grid(load_config(args.configfile))
    except ConfigError as e:
        print(f"error: {e}")
        return 2
    print(write_progress(grid, args.out, args.directory), end="")
    return 0
