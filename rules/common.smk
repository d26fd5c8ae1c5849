# Config -> validated grid, paths and the per-cell hardware plan. Everything else in rules/ reads these names.
import re
import sys
from pathlib import Path

from eldistill.cell import LPIPS_FILES
from eldistill.grid import (
    ConfigError,
    budget_text,
    build_grid,
    merge,
    prepared_resolution,
    read_yaml,
)
from eldistill.report.common import CONVERGENCE_PAIRS
from eldistill.resources import retry_runtime, segment_images

DEFAULT_CONFIG = Path(workflow.basedir) / "config" / "config.yaml"
SCHEMA = Path(workflow.basedir) / "config" / "schemas" / "config.schema.yaml"

# No `configfile:` directive on purpose: a --configfile (paper.yaml, ci.yaml) replaces the embedded default
# instead of being merged into it, so no experiment of the miniature leaks into the paper's grid.
if "scale" not in config:
    config.update(merge(read_yaml(DEFAULT_CONFIG), dict(config)))

try:
    GRID = build_grid(config, SCHEMA)
except ConfigError as e:  # before any job exists: name the key and stop
    sys.exit(f"eldistill: {e}")

CFG = GRID.config  # validated, defaults filled
# the site's limit: no job (retries included) asks more
MAX_RUNTIME = CFG["hardware"]["max_runtime_min"]
# the GPU-hours, before anything is submitted (the dry run too); not again inside each job
if workflow.is_main_process:
    print(budget_text(GRID), file=sys.stderr)
    print(
        f"  per job: results/{GRID.scale}/plan.csv (the grid rule writes it)",
        file=sys.stderr,
    )
# the paper's numbers and tolerances: relative to the repository, so --directory elsewhere still finds them
for _key in ("reported", "tolerances"):
    if not Path(CFG[_key]).is_absolute():
        CFG[_key] = str(Path(workflow.basedir) / CFG[_key])
SCALE = GRID.scale
RESULTS = f"results/{SCALE}"
LOGS = f"{RESULTS}/logs"
CELL_IDS = sorted(GRID.cells)
TABLES = GRID.tables
PROTOCOL = CFG["protocol"]
ON_GPU = CFG["hardware"]["gpus_per_node"] > 0


def one_of(names):
    """A wildcard constraint that accepts exactly these names (and nothing when the list is empty)."""
    names = sorted(names)
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


# The figures of `eldistill figures` this config has data for: gradvar needs the probe, samples any cell, the
# others the experiment of their name among the experiments that run (only_experiments may leave some out).
FIGURES = [
    f
    for f in (
        "convergence",
        "batch_size",
        "diversity",
        "gradvar",
        "frameworks",
        "samples",
        "claims",
    )
    if (f == "gradvar" and CFG["gradvar"])
    or f in ("samples", "claims")
    or f in {row.get("experiment") for row in GRID.rows}
]
FIGURES.append("samples_by_dataset")


def has_cells(distiller, dataset, batch):
    return any(
        r["distiller"] == distiller
        and r["dataset"] == dataset
        and (batch is None or r["batch"] == batch)
        for r in GRID.rows
    )


# the paper's convergence figures (DI on CIFAR-10, SiD2A on ImageNet 512 at 2048) where the grid has the cells
FIGURES += [f for f, pair in CONVERGENCE_PAIRS.items() if has_cells(*pair)]
TABLE_FILES = [
    f"{RESULTS}/tables/{t}.{ext}" for t in TABLES for ext in ("csv", "md", "tex")
]
TABLE_FILES += [
    f"{RESULTS}/tables/{t}.csv"
    for t in ("cells", "claims", "convergence", "summary", "el_effect")
]
if CFG["gradvar"]:
    TABLE_FILES.append(f"{RESULTS}/tables/gradvar.csv")
FIGURE_FILES = [
    f"{RESULTS}/figures/{f}.{ext}" for f in FIGURES for ext in ("pdf", "png")
]


wildcard_constraints:
    cell=one_of(CELL_IDS),
    dataset=one_of(CFG["datasets"]),
    teacher=one_of(CFG["teachers"]),


# --- per-cell lookups (input functions) ----------------------------------------------------------------------
def cell_of(wildcards):
    return GRID.cells[wildcards.cell]


def plan_of(wildcards):
    return GRID.plans[wildcards.cell]


def cell_inputs(wildcards):
    """Files a cell's training reads: its teacher, its dataset and (SiD2A) the SiD generator it starts from."""
    cell = cell_of(wildcards)
    inputs = {"teacher": cell.teacher, "dataset": cell.dataset}
    if cell.init_generator:
        inputs["init"] = cell.init_generator
    # CM's / DMD1's LPIPS distance reads these weights (rule download_lpips)
    if cell.lpips:
        inputs["lpips"] = [f"{cell.lpips}/{name}" for name in LPIPS_FILES]
    return inputs


def reference_of(dataset):
    """Reference statistics: ours (.npz) for the miniature, the published file (.npz, EDM2's .pkl) otherwise."""
    url = PROTOCOL["references"].get(dataset, "")
    ext = ".pkl" if url.endswith(".pkl") else ".npz"
    return f"{RESULTS}/fid/{dataset}-{PROTOCOL['name']}{ext}"


def feature_net_of(dataset):
    if PROTOCOL["name"] == "mini-classifier":
        return f"{RESULTS}/fid/{dataset}-classifier.pt"
    return f"{RESULTS}/fid/inception-2015-12-05.pt"
