"""`eldistill figures`: draw one paper figure (PDF and PNG) from the tables folder alone.

Figures and what they read (TABLES = the folder `eldistill tables` wrote; copying it from a cluster is
enough to redraw any figure):
    convergence  convergence.csv rows of experiment `convergence`: FID vs images seen, one line per cell,
                 EL off blue / on orange (snapshot records; the final record when a cell has none)
    batch_size   cells.csv rows of experiment `batch_size`: FID vs batch, one line per distiller x EL
    diversity    cells.csv rows of experiment `diversity`: FID heatmap, architectures x inits per arch
    gradvar      gradvar.csv: variance vs K (a line per batch) and vs batch (a line per K), log-log, with the
                 least-squares slope of log variance on log K (resp. B); rows repeated at one (K, batch)
                 are averaged
    frameworks   cells.csv rows of experiment `frameworks`: FID per distiller, EL off / on, per dataset
    samples      cells.csv rows with a samples PNG of experiment `main` (all cells when there is no `main`):
                 a grid of the 8x8 sample grids
    convergence_di_cifar10, convergence_sid2a_imagenet512
                 the paper's convergence figures: convergence.csv rows of every experiment for DI vs DI+EL on
                 CIFAR-10, and SiD2A vs SiD2A+EL on ImageNet 512 at batch 2048 (CONVERGENCE_PAIRS)
    samples_by_dataset
                 cells.csv: per dataset, the one-step sample grid of its lowest-FID EL-on cell (any cell when
                 none has EL), as the paper's sample figures show one per dataset
`--experiment` overrides the experiment a figure reads. Every title names the FID protocol.
"""

from __future__ import annotations

import argparse
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: figures are files, never windows

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
from tqdm import tqdm  # noqa: E402

from eldistill.report.common import CONVERGENCE_PAIRS, protocol_short, read_csv  # noqa: E402

FIGURES = ("convergence", "batch_size", "diversity", "gradvar", "frameworks", "samples", *CONVERGENCE_PAIRS)
FIGURES += ("samples_by_dataset",)
NO_EXPERIMENT = ("gradvar", "samples", "samples_by_dataset", *CONVERGENCE_PAIRS)  # they choose their own rows
EL_COLORS = {False: "tab:blue", True: "tab:orange"}


def _experiment_rows(df: pd.DataFrame, experiment: str, path: Path) -> pd.DataFrame:
    rows = df[df["experiment"].astype(str) == experiment]
    if rows.empty:
        present = ", ".join(sorted(map(str, df["experiment"].unique()))) or "none"
        raise ValueError(f"{path}: no rows of experiment '{experiment}' (experiments present: {present})")
    return rows


def _cells(tables: Path, experiment: str) -> pd.DataFrame:
    path = tables / "cells.csv"
    cells = read_csv(path, ("experiment", "cell_id", "distiller", "el", "batch", "fid", "protocol"), "cells table")
    return _experiment_rows(cells, experiment, path)


def _el_label(el) -> str:
    return "EL on" if bool(el) else "EL off"


def _plain_numbers(*axes) -> None:
    """Log axes labelled 2, 5, 10 rather than 2x10^0."""
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    sparse = FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else "")  # minor ticks: 2, 5, 20, 50...
    for axis in axes:
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(sparse)


def _title(fig, title: str, protocols) -> None:
    fig.suptitle(f"{title}\n{protocol_short(protocols)}", fontsize=10)


def draw_convergence(tables: Path, experiment: str):
    path = tables / "convergence.csv"
    conv = read_csv(path, ("experiment", "cell_id", "key", "el", "kind", "images_seen", "fid", "protocol"), "table")
    conv = _experiment_rows(conv, experiment, path)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for _, rows in conv.groupby("cell_id", sort=False):
        snaps = rows[rows["kind"] == "snapshot"]
        curve = (snaps if len(snaps) else rows).dropna(subset=["fid", "images_seen"])
        # the last snapshot and generator.pt are both evaluated at the final images: one point
        curve = curve.drop_duplicates("images_seen").sort_values("images_seen")
        el = bool(rows["el"].iloc[0])
        ax.plot(curve["images_seen"], curve["fid"], "o-", ms=3, color=EL_COLORS[el], label=str(rows["key"].iloc[0]))
    ax.set(xlabel="images seen", ylabel="FID", yscale="log")
    _plain_numbers(ax.yaxis)
    ax.legend(fontsize=6)
    _title(fig, "FID during distillation, EL off (blue) / on (orange)", conv["protocol"])
    return fig


def draw_convergence_pair(tables: Path, name: str, experiment: str | None = None):
    """FID against images seen for one distiller on one dataset, EL off and on (every experiment's cells of that
    distiller, dataset and batch; a cell two experiments share is drawn once)."""
    distiller, dataset, batch = CONVERGENCE_PAIRS[name]
    path = tables / "convergence.csv"
    columns = ("experiment", "cell_id", "key", "dataset", "distiller", "batch", "el", "kind", "images_seen", "fid")
    conv = read_csv(path, (*columns, "protocol"), "table")
    if experiment:
        conv = _experiment_rows(conv, experiment, path)
    pick = (conv["distiller"].astype(str) == distiller) & (conv["dataset"].astype(str) == dataset)
    if batch is not None:
        pick &= conv["batch"] == batch
    conv = conv[pick & conv["kind"].isin(["snapshot", "final"])]
    if conv.empty:
        raise ValueError(
            f"{path}: no FID records of {distiller} on {dataset}" + (f" at batch {batch}" if batch else "")
        )
    conv = conv.drop_duplicates(["cell_id", "kind", "images_seen", "fid"])
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for _, rows in conv.groupby("cell_id", sort=False):
        snaps = rows[rows["kind"] == "snapshot"]
        curve = (snaps if len(snaps) else rows).dropna(subset=["fid", "images_seen"])
        curve = curve.drop_duplicates("images_seen").sort_values("images_seen")
        el = bool(rows["el"].iloc[0])
        label = f"{distiller.upper()}{' + EL' if el else ''} (batch {int(rows['batch'].iloc[0])})"
        ax.plot(curve["images_seen"], curve["fid"], "o-", ms=3, color=EL_COLORS[el], label=label)
    ax.set(xlabel="images seen", ylabel="FID", yscale="log")
    _plain_numbers(ax.yaxis)
    ax.legend(fontsize=7)
    where = f"{dataset}" + (f", batch {batch}" if batch else "")
    _title(fig, f"Convergence of {distiller.upper()} without and with EL ({where})", conv["protocol"])
    return fig


def draw_samples_by_dataset(tables: Path, experiment: str | None = None):
    path = tables / "cells.csv"
    cells = read_csv(path, ("experiment", "cell_id", "key", "dataset", "distiller", "el", "fid", "samples"), "table")
    if experiment:
        cells = _experiment_rows(cells, experiment, path)
    trained = ~cells["distiller"].astype(str).str.startswith("teacher")  # the teachers' own rows sample 35+ steps
    cells = cells[trained & cells["samples"].notna() & (cells["samples"].astype(str) != "")]
    if cells.empty:
        raise ValueError(f"{path}: no distilled cell has a samples PNG")
    chosen = []
    for _, rows in cells.groupby("dataset", sort=True):
        pool = rows[rows["el"].astype(bool)] if rows["el"].astype(bool).any() else rows
        chosen.append(pool.sort_values("fid", na_position="last").iloc[0])
    fig, axes = plt.subplots(1, len(chosen), figsize=(3.2 * len(chosen), 3.8), squeeze=False)
    for ax, row in zip(axes[0], chosen):
        png = tables / str(row["samples"])
        if not png.is_file():
            raise ValueError(f"{path}: cell {row['cell_id']} names a samples file that is missing: {png}")
        ax.imshow(mpimg.imread(png), cmap="gray", vmin=0.0, vmax=1.0)
        ax.axis("off")
        fid = "" if pd.isna(row["fid"]) else f", FID {row['fid']:.3g}"
        ax.set_title(f"{row['dataset']}: {row['distiller']}{' + EL' if row['el'] else ''}{fid}", fontsize=8)
    _title(fig, "One-step samples per dataset (fixed seeds; the best EL cell of each)", cells["protocol"])
    return fig


def draw_batch_size(tables: Path, experiment: str):
    cells = _cells(tables, experiment).drop_duplicates("cell_id")
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    several = cells["dataset"].nunique() > 1
    for (dataset, distiller, el), rows in cells.groupby(["dataset", "distiller", "el"], sort=True):
        rows = rows.dropna(subset=["fid"]).sort_values("batch")
        style = "o-" if el else "s--"
        label = f"{dataset} " * several + f"{distiller}, {_el_label(el)}"
        ax.plot(rows["batch"], rows["fid"], style, color=EL_COLORS[bool(el)], label=label)
    ax.set(xlabel="batch size", ylabel="FID", xscale="log", yscale="log")
    _plain_numbers(ax.yaxis)
    ax.set_xticks(sorted(cells["batch"].unique()), [str(int(b)) for b in sorted(cells["batch"].unique())])
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.legend(fontsize=7)
    missing = int(cells["fid"].isna().sum())
    extra = f" ({missing} cells without a final FID not drawn)" if missing else ""
    _title(fig, f"FID against batch size{extra}", cells["protocol"])
    return fig


def draw_diversity(tables: Path, experiment: str):
    cells = _cells(tables, experiment).drop_duplicates("cell_id")
    cells = cells[cells["el"].astype(bool)]
    groups = list(cells.groupby(["dataset", "distiller", "batch"], sort=True))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 4), squeeze=False)
    for ax, ((dataset, distiller, batch), rows) in zip(axes[0], groups):
        rows = rows.astype({"n_archs": int, "inits_per_arch": int})
        grid = rows.pivot_table(index="n_archs", columns="inits_per_arch", values="fid", aggfunc="mean", dropna=False)
        sns.heatmap(grid, annot=True, fmt=".3g", cmap="viridis_r", ax=ax, cbar_kws={"label": "FID"})
        ax.set(
            xlabel="initialisations per architecture",
            ylabel="architectures",
            title=f"{dataset} {distiller} B={batch:g}",
        )
    _title(fig, "Embedder diversity: FID by architectures x initialisations", cells["protocol"])
    fig.tight_layout()
    return fig


def loglog_slope(x, y) -> float:
    """Least-squares slope of log y on log x (O(1/x) gives -1)."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def draw_gradvar(tables: Path, experiment: str | None = None):
    path = tables / "gradvar.csv"
    data = read_csv(path, ("K", "batch", "variance"), "gradvar table")
    others = [c for c in data.columns if c not in ("K", "batch", "variance", "repeat", "seed")]
    constant = {c: data[c].iloc[0] for c in others if data[c].nunique(dropna=False) == 1}
    mean = data.groupby(["K", "batch"], as_index=False)["variance"].mean()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, (x, line) in zip(axes, (("K", "batch"), ("batch", "K"))):
        for value, rows in mean.groupby(line):
            rows = rows.sort_values(x)
            label = f"{'B' if line == 'batch' else 'K'}={value:g}"
            if len(rows) > 1:
                label += f": slope {loglog_slope(rows[x], rows['variance']):.2f}"
            ax.plot(rows[x], rows["variance"], "o-", label=label)
        ax.set(xscale="log", yscale="log", ylabel="gradient variance", xlabel="embedders K" if x == "K" else "batch B")
        ticks = sorted(mean[x].unique())
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.legend(fontsize=7, title="fitted log-log slope (O(1/x): -1)", title_fontsize=7)
    settings = ", ".join(f"{k} = {v}" for k, v in constant.items()) or "as recorded in gradvar.csv"
    fig.suptitle(
        "Gradient variance of EL against the number of embedders K and the batch B\n"
        + textwrap.fill(f"probe settings: {settings}", 150, max_lines=3, placeholder=" [...]"),
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def draw_frameworks(tables: Path, experiment: str):
    cells = _cells(tables, experiment).drop_duplicates("cell_id").copy()
    cells["EL"] = cells["el"].map(_el_label)
    datasets = sorted(cells["dataset"].astype(str).unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        rows = cells[cells["dataset"].astype(str) == dataset]
        sns.barplot(
            data=rows, x="distiller", y="fid", hue="EL", hue_order=["EL off", "EL on"], errorbar=None, ax=ax,
            palette={"EL off": EL_COLORS[False], "EL on": EL_COLORS[True]},
        )  # fmt: skip
        for bars in ax.containers:
            ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set(title=dataset, ylabel="FID")
    _title(fig, "FID per distiller without and with the Embedding Loss", cells["protocol"])
    fig.tight_layout()
    return fig


def draw_samples(tables: Path, experiment: str | None):
    path = tables / "cells.csv"
    cells = read_csv(path, ("experiment", "cell_id", "key", "samples", "protocol"), "cells table")
    if experiment is None and (cells["experiment"] == "main").any():
        experiment = "main"  # a readable grid; the full paper grid has dozens of cells
    if experiment:
        cells = _experiment_rows(cells, experiment, path)
    cells = cells[cells["samples"].notna() & (cells["samples"].astype(str) != "")].drop_duplicates("cell_id")
    if cells.empty:
        raise ValueError(f"{path}: no cell has a samples PNG")
    ncols = min(4, len(cells))
    nrows = math.ceil(len(cells) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 3.3 * nrows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (_, row) in zip(axes.flat, cells.iterrows()):
        png = tables / str(row["samples"])
        if not png.is_file():
            raise ValueError(f"{path}: cell {row['cell_id']} names a samples file that is missing: {png}")
        ax.imshow(mpimg.imread(png), cmap="gray", vmin=0.0, vmax=1.0)  # PNG pixels read as [0, 1]
        ax.set_title("\n".join(textwrap.wrap(str(row["key"]), 28)), fontsize=7)
    _title(fig, "One-step samples (fixed seeds)", cells["protocol"])
    return fig


DRAW = {
    "convergence": draw_convergence,
    "batch_size": draw_batch_size,
    "diversity": draw_diversity,
    "gradvar": draw_gradvar,
    "frameworks": draw_frameworks,
    "samples": draw_samples,
    "samples_by_dataset": draw_samples_by_dataset,
    **{
        name: (lambda tables, experiment, name=name: draw_convergence_pair(tables, name, experiment))
        for name in CONVERGENCE_PAIRS
    },
}


def make_figure(tables_dir: str | Path, name: str, out_dir: str | Path, experiment: str | None = None) -> list[Path]:
    """Draw figure `name` from TABLES_DIR into OUT_DIR/<name>.pdf and .png; return the two paths."""
    if name not in DRAW:
        raise ValueError(f"figure '{name}' is unknown; choose one of {', '.join(FIGURES)}")
    tables, out = Path(tables_dir), Path(out_dir)
    if not tables.is_dir():
        raise ValueError(f"tables folder not found: {tables}")
    if experiment is None and name not in NO_EXPERIMENT:
        experiment = name
    fig = DRAW[name](tables, experiment)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in tqdm(("pdf", "png"), desc=f"figure {name}", unit="file", leave=False):
        path = out / f"{name}.{ext}"
        tmp = out / f".{name}.tmp.{ext}"
        fig.savefig(tmp, dpi=150, bbox_inches="tight")
        tmp.replace(path)
        paths.append(path)
    plt.close(fig)
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tables", required=True, help="tables folder written by `eldistill tables`")
    parser.add_argument("--figure", required=True, choices=FIGURES)
    parser.add_argument("--out", required=True, help="figures folder (results/<scale>/figures)")
    parser.add_argument("--experiment", help="the grid experiment to draw (default: the figure's name)")


def run(args: argparse.Namespace) -> int:
    paths = make_figure(args.tables, args.figure, args.out, args.experiment)
    print("figures: " + ", ".join(map(str, paths)))
    return 0
