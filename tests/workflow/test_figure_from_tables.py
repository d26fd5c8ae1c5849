"""A figure target regenerates from a copied results/<scale>/tables/ alone: nothing upstream runs or is needed
(no runs, teachers, datasets or grid on this machine)."""

from __future__ import annotations

import re

from .conftest import REPO, snakemake

CI = str(REPO / "config" / "ci.yaml")
CELLS = """experiment,table,cell_id,dataset,distiller,el,batch,fid,protocol
frameworks,frameworks,sid-noel-b16-aaaa,digits,sid,False,16,9.0,mini-classifier
frameworks,frameworks,sid-el-b16-bbbb,digits,sid,True,16,7.0,mini-classifier
main,main,sid2a-el-b16-cccc,digits,sid2a,True,16,6.5,mini-classifier
"""


def copied_tables(work):
    """What `scp -r cluster:results/ci/tables results/ci/` leaves: every table file of the ci config."""
    tables = work / "results" / "ci" / "tables"
    (tables / "samples").mkdir(parents=True)
    for name in ("frameworks", "main"):
        for ext in ("csv", "md", "tex"):
            (tables / f"{name}.{ext}").write_text(CELLS if ext == "csv" else f"table {name}\n")
    (tables / "cells.csv").write_text(CELLS)
    for name in ("claims", "convergence", "gradvar", "summary", "el_effect"):
        (tables / f"{name}.csv").write_text("key\n")
    return tables


def planned_jobs(output: str) -> dict[str, int]:
    stats = output.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M) if m.group(1) != "total"}


def test_figure_from_copied_tables_reruns_nothing_upstream(tmp_path):
    copied_tables(tmp_path)
    args = ["figure_frameworks", "--configfile", CI, "--directory", str(tmp_path)]
    dry = snakemake(["-n", *args], timeout=120)
    assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-2000:]
    assert planned_jobs(dry.stdout) == {"figure": 1, "figure_frameworks": 1}

    run = snakemake(["--cores", "1", *args], timeout=180)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    figures = tmp_path / "results" / "ci" / "figures"
    assert (figures / "frameworks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (figures / "frameworks.pdf").read_bytes()[:5] == b"%PDF-"
    made = {p.name for p in (tmp_path / "results" / "ci").iterdir()}
    assert made == {"tables", "figures", "logs"}  # no runs, teachers, data, fid, grid.csv

    # a newer copy of the tables redraws the figure, and only the figure
    (tmp_path / "results" / "ci" / "tables" / "cells.csv").write_text(CELLS.replace("7.0", "6.0"))
    again = snakemake(["-n", *args], timeout=120)
    assert planned_jobs(again.stdout) == {"figure": 1, "figure_frameworks": 1}
