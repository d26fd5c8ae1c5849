"""eldistill launch without a scheduler: finding cells, planning them on a partition, refusing bad input before
anything is submitted, and the job callable's command and requeue bound."""

from __future__ import annotations

import pickle
import sys

import pytest

from eldistill import launch as L
from eldistill.checkpoints import load_network, save_network
from eldistill.cli import main
from eldistill.launch import Partition, TrainCell, plan_cell, resolve_cell

ONE_GPU = Partition("debug", nodes=1, gpus_per_node=1, cpus_per_node=2)


@pytest.fixture
def no_submission(monkeypatch):
    """Any attempt to reach SLURM fails the test; the partition is a fixed stand-in for sinfo."""

    def refuse(*a, **k):
        raise AssertionError("submitted although the input was bad")

    monkeypatch.setattr(L.submitit, "SlurmExecutor", refuse)
    monkeypatch.setattr(L, "read_partition", lambda name=None: ONE_GPU)


def test_resolve_cell_by_file_and_by_id(make_cell, tmp_path):
    cell = make_cell()
    path = tmp_path / "cell.json"
    cell.save(path)
    assert resolve_cell(path).cell_id == cell.cell_id
    stored = tmp_path / "results" / "mini" / "runs" / cell.cell_id / "config.json"
    cell.save(stored)
    assert resolve_cell(cell.cell_id, tmp_path / "results").cell_id == cell.cell_id
    with pytest.raises(ValueError, match="cell file not found: .*missing.json"):
        resolve_cell(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="cell 'sid-noel-b4-0000000000': no such file, and no cell with that id"):
        resolve_cell("sid-noel-b4-0000000000", tmp_path / "results")


def test_place_cell_fills_the_results_layout(make_cell, tmp_path):
    cell = make_cell(run_dir="", state_dir="")
    with pytest.raises(ValueError, match="'run_dir' is empty"):
        L.place_cell(cell, None)
    L.place_cell(cell, tmp_path / "results" / "mini")
    assert cell.run_dir == str(tmp_path / "results" / "mini" / "runs" / cell.cell_id)
    assert cell.state_dir == str(tmp_path / "results" / "mini" / "state" / cell.cell_id)
    (tmp_path / "results" / "mini" / "runs" / cell.cell_id).mkdir(parents=True)
    (tmp_path / "results" / "mini" / "runs" / cell.cell_id / "generator.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="already finished .*generator.pt"):
        L.place_cell(cell, None)


def test_teacher_shape_counts_parameters(tiny_files, tmp_path):
    teacher, _ = tiny_files
    net, _ = load_network(teacher)
    assert L.teacher_shape(teacher) == (8, sum(t.numel() for t in net.state_dict().values()))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        L.teacher_shape(tmp_path / "junk.pt")
    generator = save_network(tmp_path / "gen.pt", net, meta={"kind": "generator", "sigma_init": 2.5})
    with pytest.raises(ValueError, match="gen.pt is a network file of kind 'generator'"):
        L.teacher_shape(generator)  # refused before anything is submitted


def test_plan_cell_miniature_runs_on_the_cpu(make_cell):
    cell = make_cell()
    req = plan_cell(cell, ONE_GPU, cpus=1)
    assert (req.gpus, req.nodes, req.tasks_per_node, req.cpus_per_task) == (0, 1, 1, 1)
    assert cell.batch_gpu == cell.batch


def test_plan_cell_refuses_what_the_partition_cannot_give(make_cell):
    with pytest.raises(ValueError, match=r"needs 2 GPU\(s\) \(2 node\(s\) x 1\).*'debug' has 1 usable node"):
        plan_cell(make_cell(), ONE_GPU, gpus=2)
    with pytest.raises(ValueError, match="--gpus 3 must be >= 0 and divide the batch 4"):
        plan_cell(make_cell(), Partition("big", 4, 8, 64), gpus=3)
    # a multi-node request on a partition that has the nodes: one task per GPU, batch split evenly
    req = plan_cell(make_cell(batch=16), Partition("big", 4, 2, 16), gpus=4)
    assert (req.gpus, req.nodes, req.tasks_per_node, req.cpus_per_task) == (4, 2, 2, 8)
    # one node with two GPUs: one task that runs torchrun with two processes
    req = plan_cell(make_cell(batch=16), Partition("big", 4, 2, 16), gpus=2)
    assert (req.nodes, req.tasks_per_node, req.cpus_per_task) == (1, 1, 16)


def test_launch_refuses_bad_input_before_submitting(no_submission, make_cell, tmp_path):
    with pytest.raises(ValueError, match="cell file not found"):
        L.launch([tmp_path / "nope.json"])
    with pytest.raises(ValueError, match="'max_requeues'"):
        L.launch([make_cell()], max_requeues=-1)
    with pytest.raises(ValueError, match="needs 2 GPU"):
        L.launch([make_cell()], gpus=2)
    missing_teacher = make_cell()
    missing_teacher.teacher = str(tmp_path / "gone.pt")
    with pytest.raises(ValueError, match="teacher file not found: .*gone.pt"):
        L.launch([missing_teacher])


def test_dry_run_plans_without_submitting(no_submission, make_cell):
    ((cell, req),) = L.launch([make_cell()], dry_run=True, cpus_per_task=1)
    assert req.gpus == 0 and req.runtime_min > 0 and cell.batch_gpu == 4


def test_cli_reports_bad_input_with_exit_2(no_submission, tmp_path, capsys):
    assert main(["launch", "--cell", str(tmp_path / "nope.json")]) == 2
    assert "cell file not found" in capsys.readouterr().err


def test_cli_dry_run(no_submission, make_cell, tmp_path, capsys):
    cell = make_cell()
    cell.save(tmp_path / "c.json")
    assert main(["launch", "--cell", str(tmp_path / "c.json"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert cell.cell_id in out and "0 GPU(s)" in out and cell.run_dir in out


def test_train_cell_commands_and_pickling():
    single = TrainCell("/x/cell.json")
    assert single.train_command() == [sys.executable, "-m", "eldistill.cli", "train", "--config", "/x/cell.json"]
    four = TrainCell("/x/cell.json", nproc=4)
    cmd = four.train_command()
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert cmd[5:] == ["-m", "eldistill.cli", "train", "--config", "/x/cell.json"]
    four._proc = object()  # a live process handle is never pickled into a (re)submission
    clone = pickle.loads(pickle.dumps(four))
    assert clone._proc is None and clone.nproc == 4 and clone.cell_path == "/x/cell.json"


def test_checkpoint_hook_is_bounded(monkeypatch):
    fn = TrainCell("/x/cell.json", max_requeues=2)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    again = fn.checkpoint()
    assert again is not None and again.function.cell_path == "/x/cell.json"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert fn.checkpoint() is None


@pytest.mark.parametrize(
    "gres, gpus", [("gpu:4", 4), ("gpu:a100:8(S:0-1)", 8), ("(null)", 0), ("gpu:2,gpu:v100:1", 3), ("tmp:10G", 0)]
)
def test_gres_column(gres, gpus):
    assert L._gres_gpus(gres) == gpus


@pytest.mark.slow
def test_torchrun_path_trains_like_one_process(make_cell, tmp_path):
    """One node, several processes: the job runs torchrun --standalone (here 2 gloo processes through
    submitit's local executor) and ends with the weights of a single-process run, up to summation order."""
    import submitit
    import torch

    from eldistill.train import train

    cell = make_cell("torchrun", total_images=8, batch_gpu=2)
    cell.save(tmp_path / "cell.json")
    executor = submitit.LocalExecutor(folder=tmp_path / "logs")
    executor.update_parameters(timeout_min=10)
    result = executor.submit(TrainCell(str(tmp_path / "cell.json"), nproc=2)).result()
    assert result["metrics"]["images_seen"] == 8
    reference = make_cell("single", total_images=8)
    train(reference)
    load = lambda run: torch.load(f"{run}/generator.pt", weights_only=True)["state_dict"]  # noqa: E731
    got, want = load(cell.run_dir), load(reference.run_dir)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
def test_requeue_bound_stops_with_state_saved(make_cell, tmp_path):
    """With max_requeues=0 a preempted job does not requeue: it records the refusal and fails with a message
    that says where the state is, and the training process saved that state before exiting. The job
    callable runs in a process that sees the variables of a one-task SLURM job (no scheduler needed: the
    refusal never calls scontrol)."""
    import os
    import signal
    import subprocess
    import time

    from eldistill.io import read_jsonl

    cell = make_cell("bounded", total_images=400)
    cell.save(tmp_path / "cell.json")
    env = dict(os.environ, SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID="77", SLURM_PROCID="0", SLURM_LOCALID="0")
    env.update(SLURM_NTASKS="1", SLURM_JOB_NUM_NODES="1", SLURM_NODEID="0", SLURM_JOB_NODELIST="localhost")
    code = f"from eldistill.launch import TrainCell; TrainCell({str(tmp_path / 'cell.json')!r}, max_requeues=0)()"
    with open(tmp_path / "job.err", "w") as err:
        job = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=err)
        metrics = tmp_path / "bounded" / "runs" / "cell" / "metrics.jsonl"
        deadline = time.time() + 180
        while not (metrics.exists() and read_jsonl(metrics)) and time.time() < deadline:
            time.sleep(0.2)
        job.send_signal(signal.SIGUSR2)  # submitit's pre-time-out / preemption signal
        assert job.wait(timeout=180) == 1
    assert "stopped after 0 requeue(s), the limit (--max-requeues 0)" in (tmp_path / "job.err").read_text()
    assert [r["event"] for r in read_jsonl(metrics.parent / "requeues.jsonl")] == ["start", "requeue_refused"]
    assert any((tmp_path / "bounded" / "state" / "cell").iterdir()), "the training state was saved"
    assert read_jsonl(metrics)[-1]["images_seen"] < 400, "it stopped mid-run"
