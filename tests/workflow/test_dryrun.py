"""`snakemake -n --profile slurm all_tables --configfile config/paper.yaml`: the jobs, and the GPUs, nodes and
runtime each distillation cell asks SLURM for. Also: a bad config stops Snakemake before any job."""

from __future__ import annotations

import re

import pytest
import yaml

from eldistill.grid import grid
from eldistill.resources import plan

from .conftest import PAPER_DATA, REPO, snakemake

PAPER = REPO / "config" / "paper.yaml"


def jobs_of(output: str) -> list[dict]:
    """The job blocks of a dry run: rule, wildcards, resources and shell command of each."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", output):
        head = re.match(r"(?:local)?rule (\w+):\n", block)
        if not head:
            continue
        job = {"rule": head.group(1), "wildcards": {}, "resources": {}, "shell": ""}
        if m := re.search(r"^\s+wildcards: (.*)$", block, re.M):
            job["wildcards"] = dict(kv.split("=", 1) for kv in m.group(1).split(", "))
        if m := re.search(r"^\s+resources: (.*)$", block, re.M):
            job["resources"] = dict(kv.split("=", 1) for kv in m.group(1).split(", "))
        if m := re.search(r"^Shell command: (.*)$", block, re.M):
            job["shell"] = m.group(1)
        jobs.append(job)
    return jobs


@pytest.fixture(scope="module")
def paper_dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper")
    data = tmp / "data"
    data.mkdir()
    for name in PAPER_DATA:  # empty stand-ins: a dry run only checks that the site's datasets exist
        (data / name).write_bytes(b"")
    overlay = tmp / "overlay.yaml"
    overlay.write_text(f"data_root: {data}\n")
    # the README's command from a fresh checkout: nothing exists yet (a scratch working directory)
    args = ["-n", "--profile", str(REPO / "slurm"), "all_tables", "--configfile", str(PAPER), str(overlay)]
    result = snakemake([*args, "--directory", str(tmp / "work")], cwd=REPO, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # the GPU-hours are printed before anything is submitted
    assert "GPU-hours of the paper grid" in result.stderr and "per job: results/paper/plan.csv" in result.stderr
    return jobs_of(result.stdout + result.stderr)


def test_job_counts(paper_dry_run):
    counts = {}
    for job in paper_dry_run:
        counts[job["rule"]] = counts.get(job["rule"], 0) + 1
    g = grid([PAPER])
    multi = sum(p["nodes"] > 1 for p in g.plans.values())
    segments = {n: sum(p["segments"] - 1 for p in g.plans.values() if (p["nodes"] > 1) == n) for n in (False, True)}
    # 83 cells (tests/workflow/test_grid.py counts them by hand), 14 of them on more than one 8-GPU node; a cell
    # longer than the 48 h limit adds one segment job per extra share; every cell of a table row is evaluated
    # (not the SiD starts that only SiD2A uses); 3 teacher evaluations
    assert (len(g.cells), multi) == (83, 14)
    expected = {
        "grid": 1,
        "link_dataset": 5,
        "download_teacher": 6,
        "convert_teacher": 6,
        "download_reference": 5,
        "download_feature_net": 1,
        "download_lpips": 2,  # VGG16 and the LPIPS heads, for CM's distance and DMD1's regression
        "gradvar": 1,
        "distill": 83 - multi,
        "distill_multinode": multi,
        "distill_segment": segments[False],
        "distill_segment_multinode": segments[True],
        "evaluate": len({r["cell_id"] for r in g.rows if r["table"] != "teachers"}),
        "evaluate_teacher": 3,
        "tables": 1,
        "all_tables": 1,
    }
    assert counts == {rule: n for rule, n in expected.items() if n}  # a rule with no job is not listed
    assert segments[False] + segments[True] == sum(p["segments"] for p in g.plans.values()) - 83 > 0


def test_gpus_nodes_cpus_and_runtime_per_cell(paper_dry_run):
    g = grid([PAPER])
    distill = [j for j in paper_dry_run if j["rule"].startswith("distill")]
    finals = [j for j in distill if "segment" not in j["rule"]]
    assert sorted(j["wildcards"]["cell"] for j in finals) == sorted(g.cells)
    for job in distill:
        cell = g.cells[job["wildcards"]["cell"]]
        teacher = g.config["teachers"][cell.labels["teacher"]]
        dataset = g.config["datasets"][cell.labels["dataset"]]
        want = plan(
            cell.labels["dataset"],
            dataset["resolution"],
            teacher["params"],
            cell.batch,
            8,
            total_images=cell.total_images,
            precision=cell.precision,
        )
        res = job["resources"]
        assert int(res["gpu"]) == want["gpus"] and int(res["nodes"]) == want["nodes"], job
        assert int(res["runtime"]) == want["runtime_min"] <= 2880 and int(res["mem_mb"]) == want["mem_mb"], job
        # --cpus-per-gpu reaches sbatch: cpus_per_task 0 keeps the profile's default out of the way
        assert res["cpus_per_gpu"] == "8" and res["cpus_per_task"] == "0", job
        assert "tasks" not in res or "multinode" in job["rule"]  # never a default `tasks`
        if "multinode" not in job["rule"]:
            assert res["tasks_per_gpu"] == "0" and "mpi" not in res
            assert (
                f"[ {want['gpus']} -gt 1 ]; then launch='torchrun --standalone --nproc_per_node={want['gpus']}"
                in job["shell"]
            )
        else:  # nodes x GPUs, one task per GPU, started by srun
            assert (res["tasks"], res["tasks_per_gpu"], res["mpi"]) == (str(want["gpus"]), "1", "srun")
            assert f"[ {want['nodes']} -gt 1 ]; then launch='srun eldistill'" in job["shell"]
        assert f"train --config results/paper/cells/{cell.cell_id}.json" in job["shell"]
        if "segment" in job["rule"]:  # segment k of S trains to k/S of the images, whole iterations
            k = int(job["wildcards"]["segment"])
            assert 1 <= k < want["segments"]
            until = -(-cell.total_images * k // (want["segments"] * cell.batch)) * cell.batch
            assert f"--until-images {until} " in job["shell"]
        else:
            assert "--until-images" not in job["shell"]


def test_hand_checked_cells(paper_dry_run):
    by_cell = {j["wildcards"]["cell"]: j["resources"] for j in paper_dry_run if j["rule"].startswith("distill")}
    g = grid([PAPER])
    rows = {(r["experiment"], r["dataset"], r["distiller"], r["batch"], r["el"]): r["cell_id"] for r in g.rows}
    # SiD on CIFAR-10 at batch 16: one GPU takes the whole batch (32 fit on an 80 GB GPU)
    small = by_cell[rows[("batch_size", "cifar10", "sid", 16, False)]]
    assert (small["gpu"], small["nodes"]) == ("1", "1")
    # batch 256: 256 / (32 per GPU x 2 accumulation steps) = 4 GPUs on one node
    assert by_cell[rows[("batch_size", "cifar10", "sid", 256, True)]]["gpu"] == "4"
    # ImageNet 64 at 8192 wants 128 GPUs; capped at hardware.max_gpus = 32, i.e. 4 full nodes
    big = by_cell[rows[("datasets", "imagenet64", "sid2a", 8192, True)]]
    assert (big["gpu"], big["nodes"], big["tasks"]) == ("32", "4", "32")


def test_a_bad_config_stops_before_any_job(tmp_path):
    config = yaml.safe_load((REPO / "config" / "ci.yaml").read_text())
    config["experiments"]["frameworks"]["vary"]["distiller"] = ["sid", "sdi"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake(["-n", "all_tables", "--configfile", str(bad), "--directory", str(tmp_path)], timeout=120)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "experiments.frameworks.vary.distiller[1]: 'sdi' is not one of" in text
    assert "Job stats" not in text and not (tmp_path / "results").exists()


def test_fresh_checkout_dry_run_shows_the_preparation_jobs(tmp_path):
    """No data at all: the README's dry run still succeeds; CIFAR-10 is downloaded and prepared, FFHQ, AFHQv2 and
    ImageNet 64 are prepared from the site's image folders, and every dataset is linked into results/."""
    args = ["-n", "--profile", str(REPO / "slurm"), "all_tables", "--configfile", str(PAPER)]
    result = snakemake([*args, "--directory", str(tmp_path)], cwd=REPO, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = jobs_of(result.stdout + result.stderr)
    prepare = sorted(j["shell"] for j in jobs if j["rule"] == "prepare_dataset")
    assert len(prepare) == 4
    assert (
        "--source cifar10-tarball --input data/downloads/cifar-10-python.tar.gz --out data/cifar10-32x32.zip"
        in (prepare[0])
    )
    assert any("--input data/downloads/imagenet/ILSVRC/Data/CLS-LOC/train" in s and "center-crop" in s for s in prepare)
    (download,) = [j["shell"] for j in jobs if j["rule"] == "download_dataset_source"]
    assert "cifar-10-python.tar.gz" in download and "--sha256 6d958be0" in download
    assert sum(j["rule"] == "link_dataset" for j in jobs) == 5
    assert not (tmp_path / "data").exists()  # a dry run writes nothing


def test_only_experiments_asks_no_figure_of_an_experiment_left_out(tmp_path):
    """With `only_experiments`, `all` draws the figures of the experiments that run and of nothing else: a figure
    of an experiment that is defined but left out has no table to read and would fail the run."""
    only = tmp_path / "only.yaml"
    only.write_text(yaml.safe_dump({"only_experiments": ["main"]}))
    args = ["-n", "--profile", str(REPO / "slurm"), "all", "--configfile", str(PAPER), str(only)]
    result = snakemake([*args, "--directory", str(tmp_path / "work")], cwd=REPO, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = {j["wildcards"]["figure"] for j in jobs_of(result.stdout + result.stderr) if j["rule"] == "figure"}
    assert figures == {"samples", "claims", "gradvar", "samples_by_dataset"}
