"""A hand-made results world for the report tests: a GRID.csv, run folders with fid.jsonl / metrics.jsonl /
config.json / samples.png, Snakemake benchmark TSVs and a gradvar CSV. Every number is chosen so the
expected tables can be worked out by hand (see test_tables.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

MINI = "mini-classifier"
PAPER = "fid50k-tf-inception"
GRID_HEADER = (
    "experiment,table,cell_id,scale,dataset,resolution,conditional,distiller,el,el_weight,batch,n_archs,"
    "inits_per_arch,aux_loss,total_images,protocol,gpus"
)


def grid_line(experiment, table, cell_id, dataset, res, distiller, el, batch, archs, inits, aux, total, protocol, gpus):
    weight = "1.0" if el else "0"
    return (
        f"{experiment},{table},{cell_id},mini,{dataset},{res},false,{distiller},{str(el).lower()},{weight},{batch},"
        f"{archs},{inits},{aux},{total},{protocol},{gpus}"
    )


GRID_LINES = [
    grid_line("main", "main", "sid2a-el", "cifar10", 16, "sid2a", True, 256, 4, 4, "el", 400, MINI, 4),
    grid_line("main", "main", "sid2a-noel", "cifar10", 16, "sid2a", False, 256, "", "", "none", 400, MINI, ""),
    grid_line("convergence", "curves", "sid2a-el", "cifar10", 16, "sid2a", True, 256, 4, 4, "el", 400, MINI, 4),
    grid_line("convergence", "curves", "sid2a-noel", "cifar10", 16, "sid2a", False, 256, "", "", "none", 400, MINI, ""),
    grid_line("batch_size", "batch", "sid2a-el", "cifar10", 16, "sid2a", True, 256, 4, 4, "el", 400, MINI, 4),
    grid_line("batch_size", "batch", "sid2a-noel", "cifar10", 16, "sid2a", False, 256, "", "", "none", 400, MINI, ""),
    grid_line("batch_size", "batch", "bs16-el", "cifar10", 16, "sid2a", True, 16, 4, 4, "none", 400, MINI, ""),
    grid_line("batch_size", "batch", "bs16-noel", "cifar10", 16, "sid2a", False, 16, "", "", "none", 400, MINI, ""),
    grid_line("diversity", "ablation", "div-4x4", "cifar10", 16, "sid2a", True, 64, 4, 4, "none", 200, MINI, ""),
    grid_line("diversity", "ablation", "div-1x4", "cifar10", 16, "sid2a", True, 64, 1, 4, "none", 200, MINI, ""),
    grid_line("diversity", "ablation", "div-1x1", "cifar10", 16, "sid2a", True, 64, 1, 1, "none", 200, MINI, ""),
    grid_line("frameworks", "frameworks", "missing", "ffhq", 16, "dmd", True, 32, 4, 4, "gan", 120, MINI, ""),
    grid_line("frameworks", "frameworks", "snaps-only", "ffhq", 16, "dmd", False, 32, "", "", "none", 120, MINI, ""),
    grid_line("frameworks", "frameworks", "wrongproto", "imagenet", 512, "sid", True, 2048, 4, 4, "none", 120, MINI, 2),
]

# cell -> (snapshot (images, fid) pairs, final (images, fid) or None, protocol of the records)
RECORDS = {
    "sid2a-el": ([(100, 8.0), (200, 4.0), (300, 2.9), (400, 2.0)], (400, 1.9), MINI),
    "sid2a-noel": ([(100, 10.0), (200, 6.0), (300, 4.0), (400, 3.0)], (400, 3.1), MINI),
    "bs16-el": ([], (400, 5.0), MINI),
    "bs16-noel": ([], (400, 40.0), MINI),
    "div-4x4": ([], (200, 9.0), MINI),
    "div-1x4": ([], (200, 10.0), MINI),
    "div-1x1": ([], (200, 12.0), MINI),
    "snaps-only": ([(50, 7.0), (100, 5.5)], None, MINI),
    "wrongproto": ([], (120, 2.5), PAPER),
}
TEACHERS = {"wrongproto": "teachers/edm2-img512-xs-2147483-0.135.pt"}
BENCHMARKS = {"sid2a-el": [100.0, 110.0], "wrongproto": [50.0], "div-4x4": [30.0]}


def record(cell_id, kind, images, fid, protocol):
    return {
        "fid": fid,
        "protocol": protocol,
        "feature_net": "classifier-abc" if protocol == MINI else "inception-2015-12-05",
        "num_samples": 500 if protocol == MINI else 50000,
        "reference": "ref-mini.npz" if protocol == MINI else "cifar10-32x32.npz",
        "seeds": [0, 499],
        "aggregation": "final",
        "checkpoint": f"generator-{images:010d}.pt",
        "images_seen": images,
        "iterations": images // 4,
        "kind": kind,
        "cell_id": cell_id,
    }


def make_world(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    grid = root / "GRID.csv"
    grid.write_text("\n".join([GRID_HEADER, *GRID_LINES]) + "\n")
    runs, bench = root / "runs", root / "benchmarks"
    bench.mkdir(parents=True)
    for cell_id, (snaps, final, protocol) in RECORDS.items():
        run = runs / cell_id
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"teacher": TEACHERS.get(cell_id, "teachers/mini.pt")}))
        lines = [json.dumps(record(cell_id, "snapshot", i, f, protocol)) for i, f in snaps]
        if cell_id == "sid2a-el":  # min-of-3-seeds: the final checkpoint again on other seeds, not a new snapshot
            lines.append(json.dumps({**record(cell_id, "snapshot", 400, 0.5, protocol), "seeds": [500, 999]}))
        if final:
            lines.append(json.dumps(record(cell_id, "final", final[0], final[1], protocol)))
        lines.append('{"fid": 0.1, "kind": "fin')  # a line torn by a kill: must be skipped
        (run / "fid.jsonl").write_text("\n".join(lines) + "\n")
        (run / "metrics.jsonl").write_text(
            json.dumps({"images_seen": 96, "iterations": 3}) + "\n" + json.dumps({"images_seen": 120, "iterations": 4})
        )
    for cell_id in ("sid2a-el", "div-1x1"):
        pixels = np.full((16, 16), 40 if cell_id == "sid2a-el" else 200, dtype=np.uint8)
        Image.fromarray(pixels).save(runs / cell_id / "samples.png")
    for cell_id, seconds in BENCHMARKS.items():
        rows = "".join(f"{s}\t0:01:40\t100.0\t200.0\n" for s in seconds)
        (bench / f"{cell_id}.tsv").write_text("s\th:m:s\tmax_rss\tmax_vms\n" + rows)
    gradvar = root / "gradvar.csv"
    rows = ["k,B,var,repeats"]
    for k in (1, 2, 4, 8):
        for b in (16, 64):
            rows.append(f"{k},{b},{3.0 / (k * b)},8")
    gradvar.write_text("\n".join(rows) + "\n")
    return {"grid": grid, "runs": runs, "benchmarks": bench, "gradvar": gradvar}


@pytest.fixture
def world(tmp_path) -> dict[str, Path]:
    return make_world(tmp_path / "world")


@pytest.fixture(scope="module")
def world_once(tmp_path_factory) -> dict[str, Path]:
    """The same world, built once per test module, for tests that only read it."""
    return make_world(tmp_path_factory.mktemp("world"))
