"""Config -> cells: expansion, sharing, SiD2A's start, stable ids, and errors that name the key."""

from __future__ import annotations

import copy
import csv

import pytest
import yaml

import eldistill.grid as grid_module
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
    # frameworks_datasets 3 datasets x (DI, DMD, CM) + DMD2 on ImageNet 64, x EL; dmd_batch 3 variants; small_batch
    # 2 batches x EL; teachers: 3 evaluations; edm2_sizes is off
    assert per_experiment == {
        "main": 6,
        "frameworks": 12,
        "datasets": 16,
        "batch_size": 16,
        "diversity": 9,
        "aux_loss": 4,
        "convergence": 2,
        "frameworks_datasets": 20,
        "dmd_batch": 3,
        "small_batch": 4,
        "teachers": 3,
    }
    # distinct cells: frameworks 12; main adds the conditional 3 and the conditional SiD+EL start of SiD2A+EL;
    # datasets 16 (the SiD2A starts are its SiD cells); batch 16 - 2 shared; diversity 9 - 1 shared (4x4);
    # aux 4 - 2 shared (none, el); convergence 0 new; frameworks_datasets 20; dmd_batch 3; small_batch: batch 16 x
    # EL 2 plus their 2 SiD starts (batch 2048 is shared with datasets); teacher evaluations are not trained
    assert len(g.cells) == 12 + 4 + 16 + 14 + 8 + 2 + 20 + 3 + 4 == 83
    assert g.skipped == ["edm2_sizes"] and len(g.teacher_evals) == 3
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
    assert config["hardware"] == {
        "gpus_per_node": 0, "gpu_mem_gb": 80, "max_gpus": 32, "max_runtime_min": 2880, "retries": 2,
        "gpu_flops": 1e14,
    }  # fmt: skip
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


def test_configs_read_as_pyyaml_reads_them_and_bad_yaml_names_the_file(tmp_path):
    # load_config and the schema go through libyaml where PyYAML has it: the same data as the pure-Python loader
    shipped = sorted((REPO / "config").rglob("*.yaml")) + sorted((REPO / "slurm").rglob("*.yaml"))
    assert len(shipped) >= 5
    for path in shipped:
        assert repr(grid_module.read_yaml(path)) == repr(yaml.load(path.read_text(), Loader=yaml.SafeLoader)), path
    # safe: a tag that builds a Python object is refused, not run
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text("scale: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="hostile.yaml: not valid YAML"):
        load_config([hostile])
    broken = tmp_path / "broken.yaml"
    broken.write_text("scale: [paper\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config([broken])


def test_dmd2_is_the_dmd_class_with_the_dmd2_recipe():
    g = grid([PAPER])
    (row,) = [r for r in g.rows if r["distiller"] == "dmd2" and not r["el"]]
    cell = g.cells[row["cell_id"]]
    assert cell.distiller == "dmd" and row["dataset"] == "imagenet64" and row["batch"] == 280
    assert cell.distiller_args["gan"] is True and cell.distiller_args["gen_update_ratio"] == 5
    assert (cell.lr, cell.precision, cell.total_images) == (2e-6, "bf16", 56_000_000)  # distillers.dmd2


def test_teacher_evaluations_carry_edms_sampler_settings():
    g = grid([PAPER])
    evals = {e["name"]: e for e in g.teacher_evals.values()}
    imagenet = evals["imagenet64"]["sampler"]
    assert (imagenet["steps"], imagenet["S_churn"], imagenet["S_min"], imagenet["S_max"]) == (256, 40, 0.05, 50)
    assert imagenet["S_noise"] == 1.003 and 2 * imagenet["steps"] - 1 == 511
    cifar = evals["cifar10-uncond"]["sampler"]
    assert (cifar["steps"], cifar["S_churn"], cifar["sigma_min"], cifar["sigma_max"], cifar["rho"]) == (
        18,
        0,
        0.002,
        80,
        7,
    )
    rows = [r for r in g.rows if r["table"] == "teachers"]
    assert sorted(r["distiller"] for r in rows) == ["teacher-edm-35nfe", "teacher-edm-35nfe", "teacher-edm-511nfe"]
    assert all(r["batch"] == "" and not r["el"] for r in rows)


def test_one_line_switches_an_experiment_on_and_another_selects_a_subset(tmp_path):
    base = load_config([PAPER])
    on = copy.deepcopy(base)
    on["experiments"]["edm2_sizes"]["enabled"] = True
    g = build_grid(on)
    sizes = [r for r in g.rows if r["experiment"] == "edm2_sizes"]
    assert len(sizes) == 5 and {r["batch"] for r in sizes} == {2048} and not g.skipped
    only = copy.deepcopy(base)
    only["only_experiments"] = ["main", "teachers"]
    g = build_grid(only)
    assert {r["experiment"] for r in g.rows} == {"main", "teachers"}
    # main: (SiD, SiD2A, SiD2A+EL) x 2 teachers, plus the SiD+EL start of each SiD2A+EL (SiD2A starts from SiD)
    assert len(g.cells) == 8
    assert "frameworks" in g.skipped and "edm2_sizes" in g.skipped


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        # the example: a teacher in `vary` of an experiment that is switched off
        (
            lambda c: c["experiments"]["edm2_sizes"]["vary"]["teacher"].insert(2, "edm2-img512-q"),
            "experiments.edm2_sizes.vary.teacher[2]: unknown teacher 'edm2-img512-q'",
        ),
        (
            lambda c: c["experiments"]["datasets"]["variants"][1].update(teacher="afhq"),
            "experiments.datasets.variants[1].teacher: unknown teacher 'afhq'",
        ),
        (lambda c: c["experiments"]["main"].update(base={"teacher": "x"}), "experiments.main.base.teacher: unknown"),
        (lambda c: c["defaults"].update(teacher="x"), "defaults.teacher: unknown teacher 'x'"),
        (lambda c: c["distillers"]["sid"].update(teacher="x"), "distillers.sid.teacher: unknown teacher 'x'"),
        (lambda c: c.update(only_experiments=["main", "mian"]), "only_experiments[1]: unknown experiment 'mian'"),
        (lambda c: c["full_grid"]["teachers"].append("x"), "full_grid.teachers[5]: unknown teacher 'x'"),
        (lambda c: c["full_grid"]["distillers"].append("dmd3"), "full_grid.distillers[6]: 'dmd3' is not one of"),
        (lambda c: c["teacher_evals"]["imagenet64"].update(teacher="x"), "teacher_evals.imagenet64.teacher: unknown"),
        (lambda c: c["protocol"]["references"].update(lsun=""), "protocol.references.lsun: unknown dataset 'lsun'"),
        (lambda c: c["experiments"]["edm2_sizes"].update(enabled="no"), "edm2_sizes.enabled: 'no' is not of type"),
        (lambda c: c["datasets"]["ffhq"]["prepare"].update(resolution=0), "ffhq.prepare.resolution: 0 is less"),
        (lambda c: c["datasets"]["ffhq"]["prepare"].update(resolution="8"), "ffhq.prepare.resolution: '8' is not"),
        (lambda c: c["datasets"]["imagenet512"]["prepare"].update(resolution=60),
         "datasets.imagenet512.prepare.resolution: 60 is not a multiple of 8"),
        (lambda c: c["lpips"].update(resize=8), "lpips.resize: 8 is less than the minimum of 16"),
    ],
)  # fmt: skip
def test_every_name_in_the_paper_config_is_checked_used_or_not(edit, named):
    config = load_config([PAPER])
    edit(config)
    assert named in _error(config)


def test_full_grid_is_the_whole_product_counted_by_hand(capsys):
    config = load_config([PAPER])
    config["only_experiments"] = ["full_grid"]
    config["full_grid"].update(
        enabled=True,
        teachers=["edm-cifar10-32x32-uncond-vp", "edm-ffhq-64x64-uncond-vp"],
        distillers=["sid", "dmd"],
        batch=[64, 256],
        diversity=[[1, 1], [4, 4]],
    )
    g = build_grid(config)
    # 2 teachers x 2 distillers x 2 batches x (EL off + EL on with 2 ensembles) = 24 cells, one row each
    assert len(g.rows) == 24 == len(g.cells) and {r["table"] for r in g.rows} == {"full_grid"}
    el_on = [r for r in g.rows if r["el"]]
    assert sorted({(r["n_archs"], r["inits_per_arch"]) for r in el_on}) == [(1, 1), (4, 4)] and len(el_on) == 16


def test_plan_csv_and_budget_add_up(tmp_path, capsys):
    out = tmp_path / "plan.csv"
    assert main(["grid", "--config", str(PAPER), "--plan", str(out)]) == 0
    text = capsys.readouterr().out
    with open(out) as f:
        rows = list(csv.DictReader(f))
    g = grid([PAPER])
    assert len(rows) == len(g.cells) + len(g.teacher_evals)
    first = sum(float(r["gpu_hours_first"]) for r in rows)
    worst = sum(float(r["gpu_hours_worst"]) for r in rows)
    assert 0 < first < worst
    total_line = next(line for line in text.splitlines() if line.strip().startswith("total"))
    assert total_line.split()[1:] == [
        str(len(rows)),
        str(sum(int(r["segments"]) > 1 for r in rows)),
        f"{first:,.0f}",
        f"{worst:,.0f}",
    ]
    for r in rows:
        gpus, segs, runtime = int(r["gpus"]), int(r["segments"]), int(r["runtime_min"])
        assert runtime <= 2880  # hardware.max_runtime_min of paper.yaml
        assert float(r["gpu_hours_first"]) == pytest.approx(gpus * segs * runtime / 60, abs=0.01)
        # worst: each segment tried 3 times (retries 2), asking runtime, 2x and 3x, each capped at the limit
        tries = sum(min(2880, runtime * a) for a in (1, 2, 3))
        assert float(r["gpu_hours_worst"]) == pytest.approx(gpus * segs * tries / 60, abs=0.01)
    assert "not selected (checked only): edm2_sizes" in text
    # --per-job: one line per plan.csv row before the per-experiment lines
    assert main(["grid", "--config", str(PAPER), "--per-job"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for r in rows:
        line = next(line for line in lines if line.split()[:1] == [r["cell_id"]])
        assert line.split()[1:4] == [r["gpus"], r["segments"], r["runtime_min"]]


def test_prepared_pixels_and_lpips_size_reach_the_plan_and_the_cells_but_not_the_rows():
    """datasets.*.prepare.resolution sets the pixels (the plan's network size: latents are 8x smaller) and
    lpips.resize the LPIPS users' cells (their id too); rows keep the dataset's resolution."""
    paper = load_config([PAPER])
    small = copy.deepcopy(paper)
    for name, resolution in (("ffhq", 8), ("imagenet512", 64)):
        small["datasets"][name]["prepare"]["resolution"] = resolution
    small["lpips"]["resize"] = 16
    assert grid_module.network_size(build_grid(paper).config["datasets"]["imagenet512"]) == 64
    assert grid_module.network_size(build_grid(small).config["datasets"]["imagenet512"]) == 8
    assert grid_module.network_size(build_grid(small).config["datasets"]["ffhq"]) == 8
    a, b = build_grid(paper), build_grid(small)
    assert [(r["dataset"], r["resolution"]) for r in a.rows] == [(r["dataset"], r["resolution"]) for r in b.rows]
    pairs = [(r["cell_id"], s["cell_id"]) for r, s in zip(a.rows, b.rows) if r["cell_id"] in a.cells]
    lpips_ids = [(old, new) for old, new in pairs if a.cells[old].lpips]
    assert lpips_ids
    for old, new in lpips_ids:
        assert (a.cells[old].lpips_resize, b.cells[new].lpips_resize) == (224, 16) and old != new
    others = [(old, new) for old, new in pairs if not a.cells[old].lpips]
    assert others and all(old == new for old, new in others)  # the pixels are a preparation setting: no cell id changes
