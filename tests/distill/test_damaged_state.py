"""Damaged or contended training files: a flipped state falls back to the previous one, damaged snapshots are
rewritten or set aside, one writer per cell, stop signals during start-up, a generator is no teacher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eldistill.checkpoints import load_network, read_network_file, save_network
from eldistill.cli import main
from eldistill.integrity import DamagedFileError
from eldistill.statefile import previous_path, read_state
from eldistill.train import EXIT_REQUEUE, STATE_FILE, STATE_FORMAT, train

REPO = Path(__file__).resolve().parents[2]
SETTINGS = dict(distiller="sid", total_images=12, snapshot_images=4)


def flip_inside_tensor(path: Path, tensor: torch.Tensor, nbytes: int = 64) -> None:
    """Invert `nbytes` bytes in the middle of `tensor`'s stored bytes (torch stores storages uncompressed)."""
    raw = path.read_bytes()
    data = tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    at = raw.find(data)
    assert at > 0 and raw.count(data) == 1, "the tensor's bytes must occur once in the file"
    start = at + len(data) // 2 - nbytes // 2
    damaged = bytearray(raw)
    damaged[start : start + nbytes] = bytes(b ^ 0xFF for b in damaged[start : start + nbytes])
    path.write_bytes(bytes(damaged))


def generator_weights(cell) -> dict[str, torch.Tensor]:
    return load_network(Path(cell.run_dir) / "generator.pt")[0].state_dict()


def test_flipped_state_falls_back_to_the_previous_one(make_cell, capsys):
    """64 flipped bytes in one tensor used to resume silently (exit 0) with another generator."""
    straight = make_cell(run="straight", **SETTINGS)
    train(straight)
    expected = generator_weights(straight)

    cell = make_cell(run="flipped", **SETTINGS)
    train(cell)
    state_path = Path(cell.state_dir) / STATE_FILE
    state = torch.load(state_path, weights_only=True)
    largest = max(state["ema"].values(), key=lambda t: t.numel())
    flip_inside_tensor(state_path, largest)
    (Path(cell.run_dir) / "generator.pt").unlink()
    capsys.readouterr()

    train(cell)  # resumes from the state at 8 images (the previous one) and repeats the last iteration
    got = generator_weights(cell)
    assert all(torch.equal(got[k], expected[k]) for k in expected)  # as if nothing had happened
    err = capsys.readouterr().err
    assert f"{state_path}: damaged" in err and "resuming from the previous state training-state.previous.pt (8" in err
    assert state_path.with_name(STATE_FILE + ".damaged").exists()
    assert read_state(state_path, STATE_FORMAT)["images_seen"] == 12  # rewritten, intact
    assert read_state(previous_path(state_path), STATE_FORMAT)["images_seen"] == 8


def test_no_intact_state_is_an_error_that_keeps_the_files(make_cell):
    cell = make_cell(run="both", **SETTINGS)
    train(cell)
    state_path = Path(cell.state_dir) / STATE_FILE
    for path in (state_path, previous_path(state_path)):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    with pytest.raises(DamagedFileError, match="no intact training state"):
        train(cell)
    assert state_path.exists() and previous_path(state_path).exists()  # nothing moved or deleted


def test_damaged_snapshots_and_orphaned_temporary_files_are_dealt_with_at_start(make_cell, capsys):
    cell = make_cell(run="snaps", **SETTINGS)
    train(cell)
    snapshots = Path(cell.state_dir) / "snapshots"
    for images in (8, 12):  # truncated: 12 is the state's own point, 8 is older
        path = snapshots / f"generator-{images:010d}.pt"
        path.write_bytes(path.read_bytes()[:300])
    orphans = [
        Path(cell.state_dir) / ".training-state.pt.k2j3.tmp",
        snapshots / ".generator-0000000016.pt.a1b2.tmp",
        Path(cell.run_dir) / ".generator.pt.zz9.tmp",
    ]
    for orphan in orphans:
        orphan.write_bytes(b"half a save")
    capsys.readouterr()

    train(cell)
    err = capsys.readouterr().err
    assert "removed 3 temporary file(s)" in err and not any(p.exists() for p in orphans)
    assert "generator-0000000012.pt" in err and "rewrote it from the training state" in err
    assert "moved it to generator-0000000008.pt.damaged" in err
    names = sorted(p.name for p in snapshots.iterdir())
    assert names == ["generator-0000000004.pt", "generator-0000000008.pt.damaged", "generator-0000000012.pt"]
    rewritten = read_network_file(snapshots / "generator-0000000012.pt")["state_dict"]
    final = generator_weights(cell)
    assert all(torch.equal(rewritten[k], final[k]) for k in final)


HOLD_LOCK = """
import sys, time
from eldistill.lock import WriterLock
lock = WriterLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_writer_is_refused_naming_the_first(make_cell, tmp_path, capsys):
    """Two trainings of one cell used to run side by side (every metrics line twice)."""
    cell = make_cell(run="two", **SETTINGS)
    config = tmp_path / "two.json"
    cell.save(config)
    env = dict(os.environ, PYTHONPATH=str(REPO / "workflow_src"))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, cell.state_dir], stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        capsys.readouterr()
        assert main(["train", "--config", str(config)]) == 1
        err = capsys.readouterr().err
        assert f"another training of cell {cell.cell_id} process is writing here" in err
        assert f"pid {holder.pid}" in err and "host " in err
        assert not (Path(cell.run_dir) / "metrics.jsonl").exists()  # the refused writer wrote nothing
    finally:
        holder.kill()  # SIGKILL: a dead holder must not keep the lock
        holder.wait()
    assert main(["train", "--config", str(config)]) == 0
    assert [r["images_seen"] for r in map(json.loads, (Path(cell.run_dir) / "metrics.jsonl").open())] == [4, 8, 12]


def _caught_signals(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return int(line.split()[1], 16)
    return 0


def _torch_loaded(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_stop_signal_during_start_up_gives_exit_3(make_cell, tmp_path, signum):
    """A signal in the first moments (imports, validation) used to kill the process (-15 / -10)."""
    cell = make_cell(run="early", **SETTINGS)
    config = tmp_path / "early.json"
    cell.save(config)
    env = dict(os.environ, PYTHONPATH=str(REPO / "workflow_src"), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "eldistill.cli", "train", "--config", str(config)], env=env, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while not _caught_signals(proc.pid) & (1 << (signum - 1)):  # bit n-1 of SigCgt: signal n is handled
            assert proc.poll() is None and time.monotonic() < deadline, "the handler never appeared"
            time.sleep(0.002)
        assert not _torch_loaded(proc.pid), "the handler must exist before the heavy imports"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_REQUEUE, err.decode()
    assert b"stopped by signal" in err and not (Path(cell.state_dir) / STATE_FILE).exists()  # nothing trained


def test_a_generator_is_not_a_teacher(make_cell, tmp_path, net_factory):
    generator = save_network(tmp_path / "gen.pt", net_factory(), meta={"kind": "generator", "sigma_init": 2.5})
    cell = make_cell(run="gen", teacher=str(generator))
    with pytest.raises(ValueError, match=f"teacher: {generator} is a network file of kind 'generator'"):
        train(cell)
    teacher = make_cell(run="t").teacher
    with pytest.raises(ValueError, match="init_generator: .* kind 'teacher'; 'init_generator' needs one of kind 'gen"):
        train(make_cell(run="init", distiller="sid2a", init_generator=teacher))
