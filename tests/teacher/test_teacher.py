"""The miniature teacher: EDM loss and EMA against closed forms, deterministic resume, signals, and
samples that move towards the data."""

from __future__ import annotations

import math
import os
import signal
import threading
import time

import numpy as np
import PIL.Image
import pytest
import torch

from eldistill.checkpoints import load_network
from eldistill.cli import main
from eldistill.data import ImageDataset
from eldistill.nets import build_network, preset
from eldistill.teacher import (
    EXIT_INTERRUPTED,
    STATE_FILE,
    edm_loss,
    ema_beta,
    sample_teacher,
    save_grid,
    train_teacher,
)

SMALL = {"batch": 8, "total_images": 64, "checkpoint_images": 16, "lr_rampup_images": 16, "log_images": 16}


class _LinearDenoiser(torch.nn.Module):
    """D(y; sigma) = a(sigma) * y with a known a: the loss is then a closed form in sigma and the noise."""

    sigma_data = 0.5

    def forward(self, y, sigma, labels=None):
        return y / (1 + sigma.view(-1, 1, 1, 1))


def test_edm_loss_matches_float64_hand_computation():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(5, 1, 4, 4, generator=gen) * 2 - 1
    loss = edm_loss(_LinearDenoiser(), x, None, torch.Generator().manual_seed(7))
    # replay the same draws in float64: sigma first (B), then the noise (B, C, H, W)
    g = torch.Generator().manual_seed(7)
    sigma = (torch.randn(5, generator=g).double() * 1.2 - 1.2).exp()
    n = torch.randn(x.shape, generator=g).double()
    xd = x.double()
    y = xd + sigma.view(-1, 1, 1, 1) * n
    weight = 1 / sigma**2 + 1 / 0.25  # (sigma^2 + sd^2) / (sigma sd)^2
    expected = weight * ((y / (1 + sigma.view(-1, 1, 1, 1)) - xd) ** 2).flatten(1).mean(1)
    assert torch.allclose(loss.double(), expected, rtol=1e-5)


def test_edm_sigma_is_lognormal_with_edm_parameters():
    seen = []

    class Recorder(_LinearDenoiser):
        def forward(self, y, sigma, labels=None):
            seen.append(sigma.clone())
            return y

    edm_loss(Recorder(), torch.zeros(20000, 1, 1, 1), None, torch.Generator().manual_seed(0))
    log_sigma = seen[0].double().log()
    assert abs(log_sigma.mean() - (-1.2)) < 0.03 and abs(log_sigma.std() - 1.2) < 0.03


def test_ema_beta_follows_edm_halflife_with_rampup():
    # ramp-up: half-life = 0.05 * images seen = 500 -> beta = 0.5 ** (64 / 500)
    assert math.isclose(ema_beta(10_000, 64, 4_000, 0.05), 0.5 ** (64 / 500))
    # past the ramp-up the set half-life holds
    assert math.isclose(ema_beta(1_000_000, 64, 4_000, 0.05), 0.5 ** (64 / 4000))
    assert math.isclose(ema_beta(10, 64, 4_000, None), 0.5 ** (64 / 4000))


def test_save_grid_places_tiles_row_major(tmp_path):
    images = torch.stack([torch.full((1, 4, 4), v) for v in (-1.0, -0.5, 0.0, 0.5, 1.0)])
    path = save_grid(images, tmp_path / "g.png", nrow=3, min_tile=8, gap=2)
    grid = np.asarray(PIL.Image.open(path))
    assert grid.shape == (2 * 8 + 2, 3 * 8 + 2 * 2)  # 2 rows x 3 columns of 8-pixel tiles, 2-pixel gaps
    expected = [0, 64, 128, 191, 255]  # EDM's quantisation of -1, -0.5, 0, 0.5, 1
    for i, value in enumerate(expected):
        r, k = divmod(i, 3)
        assert (grid[r * 10 : r * 10 + 8, k * 10 : k * 10 + 8] == value).all()
    assert (grid[8:10, :] == 128).all() and (grid[:, 8:10] == 128).all()  # grey gaps
    assert (grid[10:, 20:] == 128).all()  # the empty slot is background


def _state_dict(path):
    return load_network(path)[0].state_dict()


def test_interrupted_run_resumes_to_the_same_weights_and_a_finished_run_returns_at_once(digits8, tmp_path):
    full = train_teacher(digits8, tmp_path / "a.pt", tmp_path / "state-a", **SMALL)
    assert full["status"] == "finished" and full["images_seen"] == 64

    # the same run in two calls: stopped after 24 images (between checkpoints), then resumed
    part = train_teacher(digits8, tmp_path / "b.pt", tmp_path / "state-b", stop_after_images=24, **SMALL)
    assert part["status"] == "interrupted" and part["images_seen"] == 24
    assert not (tmp_path / "b.pt").exists() and (tmp_path / "state-b" / STATE_FILE).exists()
    rest = train_teacher(digits8, tmp_path / "b.pt", tmp_path / "state-b", **SMALL)
    assert rest["status"] == "finished" and rest["images_seen"] == 64

    a, b = _state_dict(tmp_path / "a.pt"), _state_dict(tmp_path / "b.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(tmp_path / "state-a" / STATE_FILE, weights_only=True)
    sb = torch.load(tmp_path / "state-b" / STATE_FILE, weights_only=True)
    assert all(torch.equal(sa["net"][k], sb["net"][k]) for k in sa["net"])
    net, meta = load_network(tmp_path / "a.pt")
    assert meta["kind"] == "teacher" and meta["images_seen"] == 64
    assert meta["dataset"] == str(digits8.resolve()) and net.label_dim == 0

    before = (tmp_path / "b.pt").stat().st_mtime_ns
    again = train_teacher(digits8, tmp_path / "b.pt", tmp_path / "state-b", **SMALL)
    assert again["status"] == "finished" and again["images_seen"] == 64
    assert (tmp_path / "b.pt").stat().st_mtime_ns == before  # nothing retrained or rewritten

    # a longer budget continues the same state
    longer = train_teacher(digits8, tmp_path / "b.pt", tmp_path / "state-b", **{**SMALL, "total_images": 72})
    assert longer["images_seen"] == 72 and load_network(tmp_path / "b.pt")[1]["images_seen"] == 72


def test_resume_refuses_a_changed_setting_naming_it(digits8, tmp_path):
    torch.manual_seed(123)
    caller_stream = torch.get_rng_state()
    train_teacher(digits8, tmp_path / "t.pt", tmp_path / "s", stop_after_images=16, **SMALL)
    assert torch.equal(torch.get_rng_state(), caller_stream)  # training seeds its own stream, not the caller's
    with pytest.raises(ValueError, match="'lr'"):
        train_teacher(digits8, tmp_path / "t.pt", tmp_path / "s", **{**SMALL, "lr": 1e-4})


def test_corrupt_state_is_named(digits8, tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / STATE_FILE).write_bytes(b"truncated")
    with pytest.raises(ValueError, match=STATE_FILE):
        train_teacher(digits8, tmp_path / "t.pt", tmp_path / "s", **SMALL)


def test_sigterm_saves_state_and_reports_interrupted(digits8, tmp_path):
    log = tmp_path / "s" / "log.jsonl"

    def send_sigterm_once_training():  # the loop (and its handler) is running once the log has a line
        for _ in range(6000):
            if log.exists():
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.01)

    handler_before = signal.getsignal(signal.SIGTERM)
    sender = threading.Thread(target=send_sigterm_once_training, daemon=True)
    sender.start()
    settings = {**SMALL, "total_images": 10**7, "log_images": 16}
    result = train_teacher(digits8, tmp_path / "t.pt", tmp_path / "s", **settings)
    sender.join()
    assert result["status"] == "interrupted" and 0 < result["images_seen"] < 10**7
    state = torch.load(tmp_path / "s" / STATE_FILE, weights_only=True)
    assert state["images_seen"] == result["images_seen"]
    assert not (tmp_path / "t.pt").exists()
    assert signal.getsignal(signal.SIGTERM) is handler_before  # the caller's handler is restored


def test_conditional_teacher_takes_label_dim_from_the_dataset_and_cli_exit_codes(digits8, tmp_path):
    out, state = tmp_path / "c.pt", tmp_path / "s"
    argv = ["train-teacher", "--dataset", str(digits8), "--out", str(out), "--state-dir", str(state),
            "--conditional", "--batch", "8", "--total-images", "32"]  # fmt: skip
    assert main([*argv, "--stop-after-images", "16"]) == EXIT_INTERRUPTED
    assert not out.exists()
    assert main(argv) == 0
    net, meta = load_network(out)
    assert net.label_dim == 10 and meta["conditional"] is True and meta["images_seen"] == 32
    # a finished run asked for a sample grid only draws it
    result = train_teacher(digits8, out, state, conditional=True, batch=8, total_images=32,
                           samples_png=tmp_path / "c.png", num_samples=12)  # fmt: skip
    assert result["images_seen"] == 32
    png = np.asarray(PIL.Image.open(tmp_path / "c.png"))
    assert png.shape == (2 * 34 - 2, 10 * 34 - 2)  # 12 images, a class per column, 8x8 enlarged to 32 px, 2 px gaps


def test_conditional_needs_labels(tmp_path):
    path = tmp_path / "nolabels"
    path.mkdir()
    PIL.Image.fromarray(np.zeros((8, 8), np.uint8)).save(path / "a.png")
    with pytest.raises(ValueError, match="nolabels"):
        train_teacher(path, tmp_path / "t.pt", tmp_path / "s", conditional=True, **SMALL)


def _histogram(x: torch.Tensor, bins: int = 16) -> np.ndarray:
    h, _ = np.histogram(x.clamp(-1, 1).numpy().ravel(), bins=bins, range=(-1, 1))
    return h / h.sum()


@pytest.mark.slow
def test_trained_teacher_samples_are_closer_to_the_data_than_the_initial_network(digits8, tmp_path):
    # 150 iterations; measured: histogram 0.86 -> 0.26, mean image 0.43 -> 0.006, std image 0.11 -> 0.014
    settings = {"batch": 32, "total_images": 4800, "lr": 3e-3, "lr_rampup_images": 480, "ema_halflife_images": 600}
    train_teacher(digits8, tmp_path / "t.pt", tmp_path / "s", **settings)
    teacher, _ = load_network(tmp_path / "t.pt")
    torch.manual_seed(0)  # the initial network of that run (seed 0)
    initial = build_network(preset("mini", img_resolution=8, img_channels=1, label_dim=0))
    data = ImageDataset(digits8).load_all().double() / 127.5 - 1

    def distances(net):
        x = sample_teacher(net.eval(), n=128, seed=1, num_steps=10).double()
        hist = np.abs(_histogram(x) - _histogram(data)).sum()  # L1 distance of the pixel-value histograms
        mean_img = (x.mean(0) - data.mean(0)).square().mean().item()  # per-pixel mean image
        std_img = (x.std(0) - data.std(0)).square().mean().item()  # per-pixel spread
        return hist, mean_img, std_img

    init_d, trained_d = distances(initial), distances(teacher)
    for name, a, b in zip(("histogram", "mean image", "std image"), init_d, trained_d):
        assert b < 0.5 * a, f"{name}: trained {b:.4f} vs initial {a:.4f}"
