"""Config -> cells: expansion, sharing, SiD2A's start, stable ids, and errors that name the key."""

from __future__ import annotations

import copy
import csv

import pytest
import yaml

from eldistill.cell import Cell
from eldistill.cli import main
from eldistill.grid import GRID_COLUMNS, ConfigError, build_grid, grid, load_config, validate_config

from .conftest import REPO

CI = REPO / "config" / "ci.yaml"
MINI = REPO / "config" / "config.yaml"
PAPER = REPO / "config" / "paper.yaml"


def ci_config() -> dict:
    return yaml.safe_load(CI.read_text())


def test_ci_grid_shares_the_sid_cell_between_experiments_and_starts_sid2a_from_it():
    g = build_grid(ci_config())
    # frameworks: SiD with EL off and on; main: SiD2A+EL, which starts from the SiD+EL cell of frameworks
    assert [(r["experiment"], r["distiller"], r["el"]) for r in g.rows] == [
        ("frameworks", "sid", False),
        ("frameworks", "sid", True),
        ("main", "sid2a", True),
    ]
    assert len(g.cells) == 3
    sid_el = g.rows[1]["cell_id"]
    sid2a = g.cells[g.rows[2]["cell_id"]]
    assert sid2a.init_generator == f"results/ci/runs/{sid_el}/generator.pt"
    assert g.init_of == {sid2a.cell_id: sid_el}
    # SiD2A's own distiller_args (distillers.sid2a) do not leak into its SiD start
    assert sid2a.distiller_args == {"gan_start_images": 0, "generator_freeze_images": 0}
    assert g.cells[sid_el].distiller_args == {}


def test_cells_carry_the_layered_settings():
    g = build_grid(ci_config())
    cell = g.cells[g.rows[1]["cell_id"]]
    # defaults of ci.yaml: batch 16, 128 images, EL weight 1 with the first 2 families x 1 init, working size 8
    assert (cell.batch, cell.total_images, cell.snapshot_images) == (16, 128, 64)
    assert (cell.el.weight, cell.el.archs, cell.el.inits_per_arch, cell.el.working_size) == (
        1.0,
        ["cnn", "multiscale"],
        1,
        8,
    )
    assert cell.teacher == "results/ci/teachers/digits-uncond.pt"
    assert cell.dataset == "results/ci/data/digits.zip"
    assert (cell.run_dir, cell.state_dir) == (f"results/ci/runs/{cell.cell_id}", f"results/ci/state/{cell.cell_id}")
    assert cell.batch_gpu == 16  # the CPU plan: one process takes the whole batch
    off = g.cells[g.rows[0]["cell_id"]]
    assert off.el.weight == 0.0 and g.rows[0]["aux_loss"] == "none" and g.rows[1]["aux_loss"] == "el"
    # the JSON the workflow writes is what `eldistill train --config` reads back
    assert Cell.from_dict(cell.to_dict()).cell_id == cell.cell_id


def test_paper_grid_counts_by_hand():
    g = grid([PAPER])
    per_experiment = {}
    for row in g.rows:
        per_experiment[row["experiment"]] = per_experiment.get(row["experiment"], 0) + 1
    # main 2 teachers x 3; frameworks 6 x 2; datasets 2 distillers x 2 EL x 4 datasets; batch 8 x 2; diversity
    # 3 x 3; aux 4; convergence 2
    assert per_experiment == {
        "main": 6,
        "frameworks": 12,
        "datasets": 16,
        "batch_size": 16,
        "diversity": 9,
        "aux_loss": 4,
        "convergence": 2,
    }
    # distinct cells: frameworks 12; main adds the conditional 3 and the conditional SiD+EL start of SiD2A+EL;
    # datasets 16 (the SiD2A starts are its SiD cells); batch 16 - 2 shared; diversity 9 - 1 shared (4x4);
    # aux 4 - 2 shared (none, el); convergence 0 new
    assert len(g.cells) == 12 + 4 + 16 + 14 + 8 + 2 == 56
    main_cond = [r for r in g.rows if r["experiment"] == "main" and r["conditional"]]
    assert {r["distiller"] for r in main_cond} == {"sid", "sid2a"}
    assert all(r["protocol"] == "fid50k-tf-inception" for r in g.rows)


def test_grid_csv_has_the_contract_columns(tmp_path):
    out = tmp_path / "GRID.csv"
    assert main(["grid", "--config", str(CI), "--out", str(out), "--cells", str(tmp_path / "cells")]) == 0
    with open(out) as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == GRID_COLUMNS
    assert GRID_COLUMNS[:16] == (
        "experiment", "table", "cell_id", "scale", "dataset", "resolution", "conditional", "distiller", "el",
        "el_weight", "batch", "n_archs", "inits_per_arch", "aux_loss", "total_images", "protocol",
    )  # fmt: skip
    assert len(rows) == 3 and rows[2]["table"] == "main" and rows[2]["resolution"] == "8"
    for row in rows:
        assert Cell.load(tmp_path / "cells" / f"{row['cell_id']}.json").cell_id == row["cell_id"]


def test_hardware_knobs_keep_the_ids():
    base = load_config([PAPER])
    other = copy.deepcopy(base)
    other["hardware"]["gpus_per_node"] = 4
    a, b = build_grid(base), build_grid(other)
    assert sorted(a.cells) == sorted(b.cells)
    changed = [c for c in a.cells if a.cells[c].batch_gpu != b.cells[c].batch_gpu or a.plans[c] != b.plans[c]]
    assert changed  # the plans differ, the ids do not
    # a result-changing setting is a new id (ImageNet 64 sets its own lr, so its cells keep theirs); CIFAR-10
    # SiD cells: frameworks 2, batch sweep 14 more, diversity 8 more, the conditional SiD and SiD+EL 2
    other["defaults"]["lr"] = 2e-5
    cifar_sid = {c for c in a.cells if a.cells[c].distiller == "sid" and a.cells[c].labels["dataset"] == "cifar10"}
    assert len(cifar_sid) == 2 + 14 + 8 + 2 and not set(build_grid(other).cells) & cifar_sid


def test_defaults_come_from_the_schema():
    config = validate_config({"scale": "ci", "datasets": {}, "teachers": {}, "experiments": {}} | ci_config())
    assert config["hardware"] == {"gpus_per_node": 0, "gpu_mem_gb": 80, "max_gpus": 32}
    assert config["experiments"]["main"]["vary"] == {}
    assert config["datasets"]["digits"]["make"]["source"] == "digits"


def conditional_without_labels(config: dict) -> None:
    config["datasets"]["digits"]["labels"] = False
    config["teachers"]["digits-uncond"]["conditional"] = True


def _error(config: dict) -> str:
    with pytest.raises(ConfigError) as info:
        build_grid(config)
    return str(info.value)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda c: c.update(epochs=3), "'epochs' was unexpected"),
        (lambda c: c["defaults"].update(bacth=16), "defaults: Additional properties"),
        (lambda c: c["defaults"].update(batch="16"), "defaults.batch: '16' is not of type 'integer'"),
        (lambda c: c["experiments"]["frameworks"]["vary"].update(distiller=["sid", "sdi"]), "vary.distiller[1]"),
        (lambda c: c["experiments"]["main"].update(teacher="nope"), "experiments.main.teacher: unknown teacher 'nope'"),
        (lambda c: c["teachers"]["digits-uncond"].update(dataset="cifar"), "teachers.digits-uncond.dataset: unknown"),
        (conditional_without_labels, "teachers.digits-uncond.conditional: dataset 'digits' has no labels"),
        (lambda c: c["experiments"]["main"]["variants"][0].update(n_archs=5), "variants[0].n_archs"),
        (lambda c: c["distillers"].update(gan={}), "distillers: 'gan' is not one of"),
        (lambda c: c["experiments"]["main"].update(table="Main Table"), "experiments.main.table"),
        (lambda c: c.update(scale="huge"), "scale: 'huge' is not one of"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key(edit, named):
    config = ci_config()
    edit(config)
    assert named in _error(config)


def test_impossible_batch_gpu_combinations_name_the_key():
    config = load_config([PAPER])
    config["hardware"]["gpu_mem_gb"] = 0.01  # not one sample of the 56 M teacher fits a GPU
    message = _error(config)
    assert "experiments.main" in message and ".batch = 256" in message and "does not fit" in message
    config = ci_config()
    config["experiments"]["main"]["variants"][0]["distiller"] = "sid2a"
    config["defaults"]["n_archs"] = 0
    assert "defaults.n_archs: 0 is less than the minimum of 1" in _error(config)


def test_grid_verb_exits_2_with_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    config = ci_config()
    config["experiments"]["frameworks"]["vary"]["batch"] = [16, -8]
    bad.write_text(yaml.safe_dump(config))
    assert main(["grid", "--config", str(bad)]) == 2
    assert "experiments.frameworks.vary.batch[1]: -8 is less than the minimum of 1" in capsys.readouterr().out


def test_every_shipped_config_is_valid():
    for path, scale in ((MINI, "mini"), (CI, "ci"), (PAPER, "paper")):
        g = grid([path])
        assert g.scale == scale and g.rows
