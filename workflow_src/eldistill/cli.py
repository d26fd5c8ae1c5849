"""The `eldistill` command line: one verb per job; every Snakemake rule calls exactly one of them.

Each verb lives in its own module, which exposes `add_arguments(parser)` and `run(args) -> int | None`.
Modules are imported only when their verb runs, so `eldistill --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from contextlib import nullcontext

from eldistill.stopsignal import StopFlag

# verb -> (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "make-dataset": ("eldistill.data.miniature", "write the offline miniature dataset in EDM's zip layout"),
    "prepare-dataset": (
        "eldistill.data.prepare",
        "write a paper dataset in EDM's layout from the CIFAR-10 tarball, a folder of images or a prepared zip",
    ),
    "download": ("eldistill.download", "fetch a published file (teacher, reference stats) with sha256 check"),
    "convert-teacher": ("eldistill.checkpoints", "convert a published EDM/EDM2 pickle to our .pt format"),
    "train-teacher": ("eldistill.teacher", "train the miniature EDM teacher on the CPU"),
    "train": ("eldistill.train", "distil one run cell (one-step generator, optional EL)"),
    "train-classifier": ("eldistill.metrics.classifier", "train the miniature protocol's feature network"),
    "ref-stats": ("eldistill.metrics.refstats", "reference statistics of a dataset for a FID protocol"),
    "evaluate": ("eldistill.metrics.evaluate", "FID of a generator checkpoint, or of every snapshot of a run"),
    "evaluate-teacher": ("eldistill.metrics.teacher_eval", "FID of a teacher with EDM's sampler (the teacher rows)"),
    "gradvar": ("eldistill.embedding.gradvar", "gradient variance of EL against K embedders and batch B"),
    "grid": ("eldistill.grid", "expand and validate the experiment config into run cells"),
    "tables": ("eldistill.report.tables", "aggregate per-cell results into paper tables (CSV/MD/LaTeX)"),
    "figures": ("eldistill.report.figures", "draw a paper figure from the aggregated tables"),
    "diff": ("eldistill.report.diff", "compare produced tables with the paper's reported numbers"),
    "progress": ("eldistill.report.progress", "where a campaign stands: current tables, diff and a summary"),
    "make-standins": ("eldistill.rehearsal.standins", "write the rehearsal's stand-ins of every published file"),
    "landing": ("eldistill.report.landing", "the HTML report's first page: what was run, claims, main table"),
    "launch": ("eldistill.launch", "submit cells straight to SLURM with submitit"),
}
# Verbs that save their state and exit 3 on SIGTERM/SIGUSR1: their handler is installed before anything else.
STOP_VERBS = ("train", "train-teacher")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eldistill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for verb, (_module, help_text) in VERBS.items():
        sub.add_parser(verb, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with StopFlag() if argv and argv[0] in STOP_VERBS else nullcontext():  # first, before importing torch
        return _dispatch(argv)


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] not in VERBS:
        build_parser().parse_args(argv)  # prints usage / error and exits
        return 2
    verb, rest = argv[0], argv[1:]
    module_name, help_text = VERBS[verb]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"eldistill {verb}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        code = module.run(args)
    except (ValueError, OSError) as e:  # bad input or a failed write: the message names the key or the file
        print(f"eldistill {verb}: error: {e}", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
