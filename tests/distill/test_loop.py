"""The training loop: resume after a signal equals an uninterrupted run; accumulation and 2-process DDP
equal the full batch on one process; the NaN guard; the files and exit codes of INTERFACES.md."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import traceback
from pathlib import Path

import pytest
import torch

from eldistill.cell import Cell, CellError
from eldistill.checkpoints import load_network
from eldistill.cli import main
from eldistill.io import read_jsonl
from eldistill.train import EXIT_REQUEUE, STATE_FILE, NonFiniteError, Trainer, train

REPO = Path(__file__).resolve().parents[2]
# The split-invariance tests use DMD2 with its GAN: every term reads real and generated images and is a per-sample
# mean. (SiDA's batch-mean BCE weighting is, as in the reference, a mean over each process's round, so SiDA's
# update depends on batch_gpu by design; tests/distill/test_losses.py checks that weighting by hand.)
DMD2_ALL = {"gan": True, "gen_update_ratio": 1}


def weights(path) -> dict[str, torch.Tensor]:
    net, meta = load_network(path)
    return net.state_dict(), meta


def assert_same(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if tol:
            torch.testing.assert_close(a[k], b[k], **tol)
        else:
            assert torch.equal(a[k], b[k]), k


def state_nets(cell: Cell) -> dict[str, torch.Tensor]:
    state = torch.load(Path(cell.state_dir) / STATE_FILE, weights_only=True)
    return {f"{n}.{k}": v for n, sd in state["nets"].items() for k, v in sd.items()}


def test_signal_then_rerun_equals_uninterrupted(make_cell, tiny_el, tmp_path, monkeypatch):
    settings = dict(distiller="sid", total_images=12, snapshot_images=8, el=tiny_el)
    straight = make_cell(run="straight", **settings)
    train(straight)

    cut = make_cell(run="cut", **settings)
    assert cut.cell_id == straight.cell_id  # folders are not part of the id
    config = tmp_path / "cut.json"
    cut.save(config)
    real_iteration = Trainer.iteration

    def iteration_then_signal(self):
        logs = real_iteration(self)
        if self.iterations == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-run; the loop must finish the step and save
        return logs

    monkeypatch.setattr(Trainer, "iteration", iteration_then_signal)
    assert main(["train", "--config", str(config)]) == EXIT_REQUEUE == 3
    state = torch.load(Path(cut.state_dir) / STATE_FILE, weights_only=True)
    assert state["images_seen"] == 4 and not (Path(cut.run_dir) / "generator.pt").exists()
    monkeypatch.setattr(Trainer, "iteration", real_iteration)
    assert main(["train", "--config", str(config)]) == 0  # resumes

    a, meta_a = weights(Path(straight.run_dir) / "generator.pt")
    b, meta_b = weights(Path(cut.run_dir) / "generator.pt")
    assert_same(a, b)
    assert_same(state_nets(straight), state_nets(cut))  # the fake score too
    assert meta_a == meta_b and meta_a["images_seen"] == 12 and meta_a["iterations"] == 3
    assert meta_a["kind"] == "generator" and meta_a["sigma_init"] == 2.5 and meta_a["cell_id"] == straight.cell_id
    log = read_jsonl(Path(cut.run_dir) / "metrics.jsonl")
    assert [r["images_seen"] for r in log] == [4, 8, 12]  # one line per iteration, none repeated
    assert [r["loss/generator"] for r in log] == [
        r["loss/generator"] for r in read_jsonl(Path(straight.run_dir) / "metrics.jsonl")
    ]
    snaps = sorted(p.name for p in (Path(cut.state_dir) / "snapshots").iterdir())
    assert snaps == ["generator-0000000008.pt", "generator-0000000012.pt"]
    record = log[-1]
    for key in (
        "loss/fake",
        "loss/generator",
        "el",
        "el/cnn/1",
        "grad_norm/generator",
        "images_per_s",
        "mem/max_rss_mb",
    ):
        assert key in record, key
    assert Cell.load(Path(cut.run_dir) / "config.json").cell_id == cut.cell_id


def assert_same_log(run_a: Cell, run_b: Cell) -> None:
    """Losses and pre-clipping gradient norms agree: unlike Adam's first steps, they see any scale error."""
    log_a, log_b = (read_jsonl(Path(c.run_dir) / "metrics.jsonl") for c in (run_a, run_b))
    assert len(log_a) == len(log_b)
    for ra, rb in zip(log_a, log_b):
        keys = [k for k in ra if k.startswith(("loss/", "grad_norm/"))]
        assert len(keys) >= 6
        for k in keys:
            assert rb[k] == pytest.approx(ra[k], rel=1e-5), k


def test_accumulation_4x8_equals_batch_32(make_cell):
    settings = dict(distiller="dmd", batch=32, total_images=32, distiller_args=DMD2_ALL)
    full = make_cell(run="full", **settings)
    accumulated = make_cell(run="accumulated", batch_gpu=8, **settings)
    train(full)
    train(accumulated)
    a, _ = weights(Path(full.run_dir) / "generator.pt")
    b, _ = weights(Path(accumulated.run_dir) / "generator.pt")
    assert any(not torch.equal(a[k], w) for k, w in load_network(full.teacher)[0].state_dict().items())  # it moved
    assert_same_log(full, accumulated)
    assert_same(a, b, rtol=1e-4, atol=1e-5)  # equal up to float32 summation order (amplified by Adam)
    assert_same(state_nets(full), state_nets(accumulated), rtol=1e-4, atol=1e-5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_rank(cell: Cell, rank: int, port: int) -> None:
    """A forked process that joins the group through torchrun's variables, as `torchrun ... train` would."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    code = 1
    try:
        train(cell, device="cpu")
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)  # leave pytest's own exit handlers to the parent


def train_two_processes(cell: Cell) -> None:
    port = free_port()
    # fork: the children inherit the imported torch, so the test does not pay two more interpreter starts
    procs = [multiprocessing.get_context("fork").Process(target=run_rank, args=(cell, r, port)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]


def test_two_process_gloo_ddp_equals_one_process(make_cell):
    settings = dict(distiller="dmd", batch=8, batch_gpu=4, total_images=16, distiller_args=DMD2_ALL)
    single = make_cell(run="single", **settings)  # 2 accumulation rounds of 4
    train(single)
    ddp = make_cell(run="ddp", **settings)  # 2 processes x 1 round of 4
    train_two_processes(ddp)
    a, _ = weights(Path(single.run_dir) / "generator.pt")
    b, _ = weights(Path(ddp.run_dir) / "generator.pt")
    assert_same_log(single, ddp)
    assert_same(a, b, rtol=1e-4, atol=1e-5)
    assert len(read_jsonl(Path(ddp.run_dir) / "metrics.jsonl")) == 2  # rank 0 alone writes


@pytest.mark.slow
def test_el_on_batch_32_equals_4_rounds_of_8_equals_2_processes_x_2_rounds_of_8(make_cell, tiny_el):
    settings = dict(distiller="sid", batch=32, total_images=64, el=tiny_el)
    full = make_cell(run="el-full", **settings)  # one process, one round of 32
    rounds = make_cell(run="el-rounds", batch_gpu=8, **settings)  # one process, 4 rounds of 8
    ddp = make_cell(run="el-ddp", batch_gpu=8, **settings)  # 2 gloo processes x 2 rounds of 8
    per_round = make_cell(run="el-per-round", batch_gpu=8, **{**settings, "el": {**tiny_el, "scope": "round"}})
    for cell in (full, rounds, per_round):
        train(cell)
    train_two_processes(ddp)
    logs = {c.run_dir: read_jsonl(Path(c.run_dir) / "metrics.jsonl") for c in (full, rounds, ddp, per_round)}
    keys = ["el", "el/cnn/0", "el/cnn/1", "loss/generator", "grad_norm/generator", "grad_norm/fake_score"]
    for other in (rounds, ddp):
        for a, b in zip(logs[full.run_dir], logs[other.run_dir], strict=True):
            for k in keys:
                assert b[k] == pytest.approx(a[k], rel=1e-5), (other.run_dir, k)
    a, _ = weights(Path(full.run_dir) / "generator.pt")
    assert any(not torch.equal(a[k], w) for k, w in load_network(full.teacher)[0].state_dict().items())  # it moved
    for other in (rounds, ddp):
        assert_same(a, weights(Path(other.run_dir) / "generator.pt")[0], rtol=1e-4, atol=1e-5)
        assert_same(state_nets(full), state_nets(other), rtol=1e-4, atol=1e-5)
    # The per-round estimate (el.scope: round) is another objective: its EL differs at the same split.
    assert per_round.cell_id != rounds.cell_id
    first = logs[per_round.run_dir][0]["el"], logs[full.run_dir][0]["el"]
    assert first[0] != pytest.approx(first[1], rel=1e-2), first


def test_el_rounds_of_one_image_equal_one_round(make_cell, tiny_el):
    # The unbiased estimator cannot be computed on one image; over the global batch it can.
    settings = dict(distiller="sid", batch=4, total_images=8, el=tiny_el)
    whole, ones = make_cell(run="el-whole", **settings), make_cell(run="el-ones", batch_gpu=1, **settings)
    train(whole)
    train(ones)
    for a, b in zip(*(read_jsonl(Path(c.run_dir) / "metrics.jsonl") for c in (whole, ones)), strict=True):
        for k in ("el", "loss/generator", "grad_norm/generator"):
            assert b[k] == pytest.approx(a[k], rel=1e-5), k
    a, b = (weights(Path(c.run_dir) / "generator.pt")[0] for c in (whole, ones))
    assert_same(a, b, rtol=1e-4, atol=1e-5)


def test_nonfinite_steps_are_skipped_then_stop(make_cell, monkeypatch):
    from eldistill.distillers.sid import SiD

    real_loss = SiD.loss

    def nan_generator_loss(self, phase, *args):
        loss, terms = real_loss(self, phase, *args)
        return (loss * float("nan"), terms) if phase == "generator" else (loss, terms)

    monkeypatch.setattr(SiD, "loss", nan_generator_loss)
    cell = make_cell(run="nan", total_images=12, max_nonfinite_steps=5)
    train(cell)
    log = read_jsonl(Path(cell.run_dir) / "metrics.jsonl")
    assert [r["nonfinite_steps"] for r in log] == [1, 2, 3] and all(r["skipped/generator"] == 1 for r in log)
    g, _ = weights(Path(cell.run_dir) / "generator.pt")
    assert_same(g, load_network(cell.teacher)[0].state_dict())  # no generator step was taken

    strict = make_cell(run="nan-strict", total_images=12, max_nonfinite_steps=1)
    with pytest.raises(NonFiniteError, match="max_nonfinite_steps = 1"):
        train(strict)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"distiller": "sdi"}, "distiller"),
        ({"batch": -4}, "batch"),
        ({"batch_gpu": 3}, "batch"),
        ({"distiller_args": {"alpha_": 1.0}}, "alpha_"),
        ({"teacher": "/nonexistent/teacher.pt"}, "teacher"),
    ],
)
def test_bad_cells_fail_before_training_naming_the_field(make_cell, tmp_path, overrides, field):
    with pytest.raises((CellError, ValueError), match=field):
        train(make_cell(run="bad", **overrides))
    assert not (tmp_path / "bad").exists()  # nothing was written
