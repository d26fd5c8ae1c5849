"""`eldistill landing`: the first page of the HTML report, from the tables folder alone.

Snakemake's report opens on the workflow description (the Snakefile's `report:` file, reStructuredText) next to
the entries of `--report-metadata FILE` (instead of the rule graph when there are any). This verb writes both:
OUT.rst, the description, with these sections, so the page says what was run and shows the claims' verdicts and
the main table before anything else:
    What was run      scale, description, cells / settings / seeds, the FID protocol (and that a miniature FID
                      is not the paper's), the counts of verdicts
    Claims            claims.csv: one row per claim and distiller with effect, 95 % interval, seeds, verdict
    Main table        summary.csv rows of the `main` table (else the first table): FID mean and interval
    EL on - off       el_effect.csv: each paired EL-on minus EL-off difference with its interval
    Where to look     the categories of the report (figures, tables, diff) and the files on disk
and OUT.yaml, the metadata: numbers only (cells, seeds, the count of each verdict), since Snakemake renders a
metadata string as a docutils parts dictionary rather than as HTML.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd
import yaml

from eldistill.io import atomic_write_bytes
from eldistill.report.common import protocol_note, read_csv


def _num(v, digits: int = 4) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.{digits}g}"


def _interval(low, high) -> str:
    return "one seed" if pd.isna(low) or pd.isna(high) else f"[{_num(low)}, {_num(high)}]"


def _rst_table(df: pd.DataFrame) -> str:
    """A reStructuredText grid table (renders everywhere docutils does; no empty cell breaks it)."""
    text = df.astype(str).replace({"": "-", "nan": "-"})
    return text.to_markdown(index=False, tablefmt="grid", disable_numparse=True)


def claims_rst(claims: pd.DataFrame) -> str:
    rows = claims[claims["verdict"].fillna("").astype(str) != ""]
    if rows.empty:
        return "No claim could be judged: no pair of cells has a FID yet."
    counts = rows["verdict"].value_counts()
    order = ("supported", "contradicted", "inconclusive", "excluded")
    summary = ", ".join(f"{counts[v]} {v}" for v in order if v in counts)
    shown = pd.DataFrame(
        {
            "claim": rows["claim"],
            "distiller": rows["distiller"],
            "scope": rows["scope"],
            "effect": rows["value"].map(_num),
            "95 % interval": [_interval(lo, hi) for lo, hi in zip(rows["ci_low"], rows["ci_high"])],
            "seeds": rows["n_seeds"].map(lambda n: _num(n, 3)),
            "verdict": rows["verdict"].str.upper(),
        }
    )
    test = ", ".join(sorted(set(rows["test"].dropna().astype(str))))
    return (
        f"Verdicts at 95 %: {summary}. Test: {test}; *supported* = the interval lies on the side the paper claims, "
        "*contradicted* = on the other side, *inconclusive* = it contains 0, *excluded* = the distiller did not "
        "learn at this size.\n\n" + _rst_table(shown)
    )


def summary_rst(summary: pd.DataFrame, table: str) -> str:
    rows = summary[summary["table"].astype(str) == table]
    shown = pd.DataFrame(
        {
            "setting": rows["key"],
            "seeds": rows["n_seeds"].map(lambda n: _num(n, 3)),
            "FID mean": rows["fid_mean"].map(_num),
            "95 % interval": [_interval(lo, hi) for lo, hi in zip(rows["fid_ci_low"], rows["fid_ci_high"])],
        }
    )
    return f"Table ``{table}``: FID over seeds (t-interval). {protocol_note(rows['protocol'])}\n\n" + _rst_table(shown)


def effect_rst(effect: pd.DataFrame) -> str:
    if effect.empty:
        return "No EL-on / EL-off pair has a FID yet."
    shown = pd.DataFrame(
        {
            "experiment": effect["experiment"],
            "distiller": effect["distiller"],
            "batch": effect["batch"].map(lambda b: _num(b, 6)),
            "FID(EL on) - FID(EL off)": effect["fid_diff_mean"].map(_num),
            "95 % interval": [
                _interval(lo, hi) for lo, hi in zip(effect["fid_diff_ci_low"], effect["fid_diff_ci_high"])
            ],
            "seeds": effect["n_seeds"].map(lambda n: _num(n, 3)),
        }
    )
    return "Paired by seed, negative = EL lowers FID.\n\n" + _rst_table(shown)


def landing(tables_dir: str | Path, scale: str, description: str = "") -> dict[str, str]:
    """The landing page's entries, in display order (module docstring)."""
    tables = Path(tables_dir)
    cells = read_csv(tables / "cells.csv", ("experiment", "cell_id", "table", "fid", "protocol"), "cells table")
    claims = read_csv(tables / "claims.csv", ("claim", "verdict"), "claims table")
    summary = read_csv(tables / "summary.csv", ("table", "key", "n_seeds", "fid_mean"), "summary table")
    effect = read_csv(tables / "el_effect.csv", ("distiller", "fid_diff_mean"), "EL effect table")
    seeds = sorted({int(s) for s in cells["seed"].dropna()}) if "seed" in cells.columns else [0]
    ok = int(cells.drop_duplicates("cell_id")["fid"].notna().sum())
    main = "main" if (summary["table"] == "main").any() else str(summary["table"].iloc[0])
    what = (
        f"Scale **{scale}**{': ' + description if description else ''}. "
        f"{cells['cell_id'].nunique()} cells ({ok} with a final FID) in {summary['key'].nunique()} settings, "
        f"training seeds {', '.join(map(str, seeds))}; experiments: {', '.join(dict.fromkeys(cells['experiment']))}. "
        f"{protocol_note(cells['protocol'])}"
    )
    return {
        "What was run": what,
        "Claims of the paper, judged over seeds": claims_rst(claims),
        "Main table": summary_rst(summary, main),
        "EL on minus EL off": effect_rst(effect),
        "Where to look": (
            "The menu (top left) lists every figure (*Figures*: claims, frameworks, batch size, convergence, "
            "diversity, gradient variance, samples), every table as CSV (*Tables*) and the paper diff "
            f"(*Paper diff*). On disk: ``results/{scale}/tables``, ``results/{scale}/figures``, "
            f"``results/{scale}/diff``."
        ),
    }


def write_landing(tables_dir: str | Path, out: str | Path, scale: str, description: str = "") -> list[Path]:
    """OUT.rst (the report's description) and OUT.yaml (its landing-page numbers); returns both paths."""
    entries = landing(tables_dir, scale, description)
    # Snakemake's viewer centres its content vertically, which hides the top of a page taller than the window,
    # and keeps the description to a narrow column: start at the top and give the tables room.
    sections = [".. raw:: html", "", "   <style>#app .items-center { align-items: flex-start; }", "   #app .max-w-lg "
                "{ max-width: 72rem; }</style>", ""]  # fmt: skip
    for title, text in entries.items():
        sections += [title, "-" * len(title), "", text, ""]
    out = Path(out)
    rst = atomic_write_bytes("\n".join(sections).encode(), out.with_suffix(".rst"))
    tables = Path(tables_dir)
    cells = pd.read_csv(tables / "cells.csv")
    claims = pd.read_csv(tables / "claims.csv")
    numbers = {"cells": int(cells["cell_id"].nunique())}
    if "seed" in cells.columns:
        numbers["training seeds"] = int(cells["seed"].nunique())
    for verdict in ("supported", "contradicted", "inconclusive", "excluded"):
        numbers[f"claims {verdict}"] = int((claims["verdict"] == verdict).sum())
    meta = atomic_write_bytes(yaml.safe_dump(numbers, sort_keys=False).encode(), out.with_suffix(".yaml"))
    return [rst, meta]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tables", required=True, help="tables folder written by `eldistill tables`")
    parser.add_argument("--scale", required=True, help="the config's scale (mini, paper, ci)")
    parser.add_argument("--description", default="", help="the config's description")
    parser.add_argument("--out", required=True, help="OUT.rst and OUT.yaml are written (any suffix is replaced)")


def run(args: argparse.Namespace) -> int:
    paths = write_landing(args.tables, args.out, args.scale, args.description)
    print("landing: " + ", ".join(map(str, paths)))
    return 0
