"""`eldistill figures`: draw one paper figure (PDF and PNG) from the tables folder alone.

Figures and what they read (TABLES = the folder `eldistill tables` wrote; copying it from a cluster is
enough to redraw any figure):
    convergence  convergence.csv rows of experiment `convergence`: FID vs images seen, one line per setting
                 (mean over seeds, 95 % t-interval band), EL off blue / on orange (snapshot records; the final
                 record when a cell has none)
    batch_size   cells.csv rows of experiment `batch_size`: FID vs batch, one line per distiller x EL (mean over
                 seeds with its 95 % interval)
    diversity    cells.csv rows of experiment `diversity`: FID heatmap (mean over seeds), architectures x inits
    gradvar      gradvar.csv: variance vs K (a line per batch) and vs batch (a line per K), log-log, with the
                 least-squares slope of log variance on log K (resp. B); rows repeated at one (K, batch)
                 are averaged
    frameworks   cells.csv rows of experiment `frameworks`: FID per distiller, EL off / on, per dataset (mean over
                 seeds, 95 % interval bars); a distiller far above the others (did not learn) is drawn clipped
                 at the top with its number written, so it never sets the scale
    claims       claims.csv: each claim's effect with its 95 % interval, one panel per claim, coloured by verdict
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
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402
from tqdm import tqdm  # noqa: E402

from eldistill.report.claims import t_interval  # noqa: E402
from eldistill.report.common import CONVERGENCE_PAIRS, protocol_short, read_csv  # noqa: E402

FIGURES = ("convergence", "batch_size", "diversity", "gradvar", "frameworks", "samples", *CONVERGENCE_PAIRS)
FIGURES += ("samples_by_dataset", "claims")
NO_EXPERIMENT = ("gradvar", "samples", "samples_by_dataset", "claims", *CONVERGENCE_PAIRS)  # they choose their rows
EL_COLORS = {False: "tab:blue", True: "tab:orange"}
VERDICT_COLORS = {"supported": "tab:green", "contradicted": "tab:red", "inconclusive": "0.45", "excluded": "0.75"}
OFF_SCALE = 3.0  # a bar above this many times the median of the others is off scale (a distiller that did not learn)


def _experiment_rows(df: pd.DataFrame, experiment: str, path: Path) -> pd.DataFrame:
    rows = df[df["experiment"].astype(str) == experiment]
    if rows.empty:
        present = ", ".join(sorted(map(str, df["experiment"].unique()))) or "none"
        raise ValueError(f"{path}: no rows of experiment '{experiment}' (experiments present: {present})")
    return rows


def _cells(tables: Path, experiment: str) -> pd.DataFrame:
    """The cells of `experiment`, and of every other experiment that fills the table of that name (e.g. a
    distiller run with fewer seeds in an experiment of its own, `frameworks_cm`, table `frameworks`)."""
    path = tables / "cells.csv"
    cells = read_csv(path, ("experiment", "cell_id", "distiller", "el", "batch", "fid", "protocol"), "cells table")
    if "table" in cells.columns:
        same_table = cells["table"].astype(str) == experiment
        cells = cells.assign(experiment=cells["experiment"].where(~same_table, experiment))
    return _experiment_rows(cells, experiment, path)


def _el_label(el) -> str:
    return "EL on" if bool(el) else "EL off"


def _plain_numbers(*axes) -> None:
    """Log axes labelled 2, 5, 10 rather than 2x10^0, with ticks at 1, 2, 5 of every decade, so even a range
    inside one decade (FID 14 to 31) gets several labels."""
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for axis in axes:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(plain)
        axis.set_minor_locator(LogLocator(base=10, subs=(3.0, 4.0, 6.0, 7.0, 8.0, 9.0)))
        axis.set_minor_formatter(NullFormatter())


def _seeds(df: pd.DataFrame) -> pd.DataFrame:
    return df if "seed" in df.columns else df.assign(seed=0)


def seed_stats(df: pd.DataFrame, by: list[str], value: str = "fid") -> pd.DataFrame:
    """Mean, 95 % t-interval (NaN with one seed) and seed count of `value` per group of `by`."""
    rows = []
    for keys, group in df.dropna(subset=[value]).groupby(by, sort=True, dropna=False):
        mean, low, high, _ = t_interval(group[value].astype(float).tolist())
        rows.append({**dict(zip(by, keys if isinstance(keys, tuple) else (keys,))), "mean": mean, "low": low,
                     "high": high, "n": len(group)})  # fmt: skip
    return pd.DataFrame(rows, columns=[*by, "mean", "low", "high", "n"])


def _yerr(stats_: pd.DataFrame) -> np.ndarray:
    """Asymmetric error bars from the interval (0 where there is one seed)."""
    low = (stats_["mean"] - stats_["low"]).fillna(0.0).clip(lower=0.0)
    high = (stats_["high"] - stats_["mean"]).fillna(0.0).clip(lower=0.0)
    return np.vstack([low.to_numpy(), high.to_numpy()])


def _seed_note(stats_: pd.DataFrame) -> str:
    counts = sorted({int(n) for n in stats_["n"]}) if len(stats_) else []
    if not counts:
        return "no seeds with a FID"
    seeds = "/".join(map(str, counts))
    return f"mean of {seeds} seed(s), bars/bands = 95 % t-interval" if max(counts) > 1 else "one seed, no interval"


def _title(fig, title: str, protocols) -> None:
    fig.suptitle(f"{title}\n{protocol_short(protocols)}", fontsize=10)


def draw_convergence(tables: Path, experiment: str):
    path = tables / "convergence.csv"
    conv = read_csv(path, ("experiment", "cell_id", "key", "el", "kind", "images_seen", "fid", "protocol"), "table")
    conv = _seeds(_experiment_rows(conv, experiment, path))
    curves = []
    for _, rows in conv.groupby("cell_id", sort=False):
        snaps = rows[rows["kind"] == "snapshot"]
        curve = (snaps if len(snaps) else rows).dropna(subset=["fid", "images_seen"])
        # the last snapshot and generator.pt are both evaluated at the final images: one point
        curves.append(curve.drop_duplicates("images_seen"))
    points = pd.concat(curves) if curves else conv.iloc[:0]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    stats_ = seed_stats(points, ["key", "el", "images_seen"])
    for (key, el), line in stats_.groupby(["key", "el"], sort=False):
        line = line.sort_values("images_seen")
        color = EL_COLORS[bool(el)]
        ax.plot(line["images_seen"], line["mean"], "o-", ms=3, color=color, label=str(key))
        if line["low"].notna().any():
            ax.fill_between(line["images_seen"], line["low"], line["high"], color=color, alpha=0.2, lw=0)
    fids = points["fid"].astype(float)
    if len(fids) and fids.min() > 0 and fids.max() / fids.min() > 8:  # a log axis only where it helps
        ax.set_yscale("log")
        _plain_numbers(ax.yaxis)
    ax.set(xlabel="images seen", ylabel="FID")
    ax.legend(fontsize=6)
    _title(fig, f"FID during distillation, EL off (blue) / on (orange); {_seed_note(stats_)}", conv["protocol"])
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
    cells = _seeds(_cells(tables, experiment).drop_duplicates("cell_id"))
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    several = cells["dataset"].nunique() > 1
    stats_ = seed_stats(cells, ["dataset", "distiller", "el", "batch"])
    for (dataset, distiller, el), rows in stats_.groupby(["dataset", "distiller", "el"], sort=True):
        rows = rows.sort_values("batch")
        style = "o-" if el else "s--"
        label = f"{dataset} " * several + f"{distiller}, {_el_label(el)}"
        ax.errorbar(rows["batch"], rows["mean"], yerr=_yerr(rows), fmt=style, color=EL_COLORS[bool(el)],
                    capsize=3, label=label)  # fmt: skip
    ax.set(xlabel="batch size", ylabel="FID", xscale="log")
    ax.set_xticks(sorted(cells["batch"].unique()), [str(int(b)) for b in sorted(cells["batch"].unique())])
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.legend(fontsize=7)
    missing = int(cells["fid"].isna().sum())
    extra = f" ({missing} cells without a final FID not drawn)" if missing else ""
    _title(fig, f"FID against batch size ({_seed_note(stats_)}){extra}", cells["protocol"])
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
    cells = _seeds(_cells(tables, experiment).drop_duplicates("cell_id")).copy()
    cells["dataset"] = cells["dataset"].astype(str)
    datasets = sorted(cells["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.4), squeeze=False)
    stats_ = seed_stats(cells, ["dataset", "distiller", "el"])
    for ax, dataset in zip(axes[0], datasets):
        rows = stats_[stats_["dataset"] == dataset]
        distillers = list(dict.fromkeys(cells.loc[cells["dataset"] == dataset, "distiller"]))
        means = rows.groupby("distiller")["mean"].max()
        # a distiller far above the others did not learn: clip its bars instead of letting it set the scale
        off = {d for d in means.index if len(means) > 2 and means[d] > OFF_SCALE * means.drop(d).median()}
        kept = rows[~rows["distiller"].isin(off)]
        top = float(np.nanmax(kept[["mean", "high"]].to_numpy(float))) * 1.15 if len(kept) else None
        for j, el in enumerate((False, True)):
            part = rows[rows["el"] == el].set_index("distiller").reindex(distillers)
            x = np.arange(len(distillers)) + (j - 0.5) * 0.4
            heights = part["mean"].to_numpy(float)
            shown = np.minimum(heights, top) if top else heights
            err = _yerr(part.reset_index())
            err[:, [d in off for d in distillers]] = 0.0
            bars = ax.bar(x, shown, 0.4, yerr=err, capsize=3, color=EL_COLORS[el], label=_el_label(el))
            for bar, h, s_ in zip(bars, heights, shown):
                if np.isnan(h):
                    continue
                clipped = top is not None and h > top
                if clipped:
                    bar.set_hatch("//")
                # the value inside the bar, from its foot: never under an error bar
                ax.text(bar.get_x() + bar.get_width() / 2, 0.02 * s_ if s_ > 0 else 0, f"{h:.3g}" + (" off scale" if
                        clipped else ""), ha="center", va="bottom", fontsize=7, rotation=90, color="white")  # fmt: skip
        ax.set_xticks(np.arange(len(distillers)), [d + (" *" if d in off else "") for d in distillers])
        if top:
            ax.set_ylim(0, top * 1.15)
        ax.set(title=dataset, ylabel="FID")
        ax.legend(fontsize=7)
        if off:
            ax.set_xlabel(f"* far above the others (did not learn): bars clipped, {', '.join(sorted(off))}", fontsize=7)
    _title(fig, f"FID per distiller without and with the Embedding Loss ({_seed_note(stats_)})", cells["protocol"])
    fig.tight_layout()
    return fig


CLAIM_TITLES = {
    "el_lowers_fid": "EL lowers FID: FID(EL on) - FID(EL off), < 0 supports",
    "gain_larger_at_b16": "EL gain at batch 16 minus at 32 (FID), > 0 supports",
    "graceful_small_batch": "relative FID rise 32 -> 16, EL minus no EL, < 0 supports",
    "diversity": "FID(1 x 4) - FID(4 x 4) embedders, > 0 supports",
    "fewer_iterations": "% fewer images to reach EL-off's final FID, > 0 supports",
}


def draw_claims(tables: Path, experiment: str | None = None):
    path = tables / "claims.csv"
    claims = read_csv(path, ("claim", "distiller", "scope", "value", "ci_low", "ci_high", "verdict", "protocol"),
                      "claims table")  # fmt: skip
    claims = claims[claims["verdict"].isin(VERDICT_COLORS)]
    if claims.empty:
        raise ValueError(f"{path}: no claim has a verdict (no pair of cells with a FID)")
    names = [c for c in CLAIM_TITLES if c in set(claims["claim"])] + sorted(set(claims["claim"]) - set(CLAIM_TITLES))
    heights = [max(1.2, 0.45 * (claims["claim"] == c).sum() + 0.9) for c in names]
    fig, axes = plt.subplots(len(names), 1, figsize=(7.5, sum(heights) + 0.8), squeeze=False,
                             gridspec_kw={"height_ratios": heights})  # fmt: skip
    for ax, name in zip(axes[:, 0], names):
        rows = claims[claims["claim"] == name].reset_index(drop=True)
        y = np.arange(len(rows))[::-1]
        judged = rows[rows["verdict"] != "excluded"]
        span = judged[["value", "ci_low", "ci_high"]].to_numpy(float)
        span = span[np.isfinite(span)]
        lim = float(np.abs(span).max()) * 1.3 if span.size else 1.0  # excluded rows never set the scale
        for yi, (_, r) in zip(y, rows.iterrows()):
            color = VERDICT_COLORS[r["verdict"]]
            value = float(r["value"])
            if np.isfinite(value) and abs(value) <= lim:
                lo, hi = float(r["ci_low"]), float(r["ci_high"])
                err = [[value - lo], [hi - value]] if np.isfinite(lo) else None
                ax.errorbar([value], [yi], xerr=err, fmt="o", color=color, capsize=4, ms=6)
            note = f"{r['verdict']}" + (f"  ({value:.3g}, off scale)" if abs(value) > lim else "")
            ax.text(1.01, yi, note, transform=ax.get_yaxis_transform(), va="center", fontsize=8, color=color)
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_xlim(-lim, lim)
        ax.set_yticks(y, [f"{d} ({s})" for d, s in zip(rows["distiller"], rows["scope"])], fontsize=8)
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_title(CLAIM_TITLES.get(name, name), fontsize=9, loc="left")
    _title(fig, "The paper's claims: effect and 95 % interval over seeds, coloured by verdict", claims["protocol"])
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
    "claims": draw_claims,
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
