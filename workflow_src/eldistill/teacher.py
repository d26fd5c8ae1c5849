"""`eldistill train-teacher`: train the miniature EDM teacher on the CPU (anchors A.0).

EDM's denoising loss: ln sigma ~ N(P_mean, P_std^2) = N(-1.2, 1.2^2), y = x + sigma * n, loss =
lambda(sigma) * ||D(y; sigma, c) - x||^2 with lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2,
averaged over pixels and batch (EDM sums over pixels; with Adam only the scale of eps differs).
Adam with a linear learning-rate ramp-up, EDM's half-life EMA (ramped with the images seen), and EDM's
non-finite-gradient guard.

Work is never lost: the full state (network, EMA, optimizer, random generators, images seen) is written
atomically to STATE_DIR/teacher-state.pt every --checkpoint-images and on SIGTERM/SIGUSR1 (then exit code
3, "requeue me"); rerunning the same command continues from it, and a finished run returns at once.
Training is deterministic for a given seed and thread count: an interrupted run resumes to the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import functools
import io
import math
import sys
import time
from pathlib import Path
from typing import Any

import PIL.Image
import torch
from tqdm import tqdm

from eldistill.checkpoints import save_network
from eldistill.data import ImageDataset
from eldistill.generator import to_uint8
from eldistill.io import append_jsonl, atomic_write_bytes, remove_orphaned_temps
from eldistill.lock import WriterLock
from eldistill.nets import build_network, preset
from eldistill.statefile import load_state, save_state
from eldistill.stopsignal import StopFlag

STATE_FORMAT = "eldistill-teacher-state-v1"
STATE_FILE = "teacher-state.pt"
LOG_FILE = "log.jsonl"
EXIT_INTERRUPTED = 3

# Defaults: 750 iterations, about 3.5 CPU-minutes for the 16x16 miniature on one core (measured under load:
# 64k images took 267 CPU-s). 32k images already give digit-like samples, 64k cleaner ones.
DEFAULTS: dict[str, Any] = {
    "preset": "mini",
    "conditional": False,
    "total_images": 48_000,
    "batch": 64,
    "lr": 2e-3,
    "lr_rampup_images": 6_400,
    "ema_halflife_images": 4_000,
    "ema_rampup_ratio": 0.05,
    "p_mean": -1.2,
    "p_std": 1.2,
    "seed": 0,
}
# Settings that change the weights; a resumed run must match them (total_images may grow).
RESULT_KEYS = ("dataset", "network", "batch", "lr", "lr_rampup_images", "ema_halflife_images", "ema_rampup_ratio",
               "p_mean", "p_std", "seed")  # fmt: skip


def edm_loss(net, images, labels, generator, p_mean=-1.2, p_std=1.2) -> torch.Tensor:
    """EDM's weighted denoising loss per sample, (B,): mean over pixels of lambda(sigma) * (D(x + sigma n) - x)^2."""
    b = images.shape[0]
    sigma = (torch.randn(b, generator=generator) * p_std + p_mean).exp()
    noise = torch.randn(images.shape, generator=generator) * sigma.view(-1, 1, 1, 1)
    weight = (sigma**2 + net.sigma_data**2) / (sigma * net.sigma_data) ** 2
    denoised = net(images + noise, sigma, labels)
    return weight * (denoised - images).square().flatten(1).mean(1)


def ema_beta(images_seen: int, batch: int, halflife_images: float, rampup_ratio: float | None) -> float:
    """EDM's EMA decay per step: the half-life (in images) grows with training until it reaches its set value."""
    halflife = halflife_images
    if rampup_ratio:
        halflife = min(halflife, images_seen * rampup_ratio)
    return 0.5 ** (batch / max(halflife, 1e-8))


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, min_tile: int = 32, gap: int = 2) -> Path:
    """A PNG grid of images in [-1, 1], each tile enlarged (nearest) to at least `min_tile` pixels, with a grey
    `gap` between tiles (digits touch their borders; without it neighbours merge)."""
    x = to_uint8(images.detach().cpu())
    scale = max(1, math.ceil(min_tile / x.shape[-1]))
    x = x.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    n, c, h, w = x.shape
    rows = math.ceil(n / nrow)
    grid = torch.full((c, rows * (h + gap) - gap, nrow * (w + gap) - gap), 128, dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        top, left = r * (h + gap), k * (w + gap)
        grid[:, top : top + h, left : left + w] = x[i]
    array = grid.permute(1, 2, 0).numpy()
    image = PIL.Image.fromarray(array[:, :, 0] if c == 1 else array[:, :, :3])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write_bytes(buffer.getvalue(), path)


def sample_teacher(net, n: int = 64, seed: int = 0, num_steps: int = 18) -> torch.Tensor:
    """n Heun samples with fixed noise; conditional nets get the classes in turn (0, 1, ..., 0, 1, ...)."""
    from eldistill.nets.sampler import heun_sample

    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, net.img_channels, net.img_resolution, net.img_resolution), generator=generator)
    labels = None
    if net.label_dim:
        labels = torch.nn.functional.one_hot(torch.arange(n) % net.label_dim, net.label_dim).to(torch.float32)
    with torch.no_grad():
        return heun_sample(net, noise, labels, num_steps=num_steps)


def _own_rng(fn):
    """Run `fn` on a forked global torch RNG: seeding the training must not change the caller's stream."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            return fn(*args, **kwargs)

    return wrapper


@_own_rng
def train_teacher(
    dataset: str | Path,
    out: str | Path,
    state_dir: str | Path,
    preset_name: str = DEFAULTS["preset"],
    conditional: bool = DEFAULTS["conditional"],
    total_images: int = DEFAULTS["total_images"],
    batch: int = DEFAULTS["batch"],
    lr: float = DEFAULTS["lr"],
    seed: int = DEFAULTS["seed"],
    samples_png: str | Path | None = None,
    lr_rampup_images: int = DEFAULTS["lr_rampup_images"],
    ema_halflife_images: int = DEFAULTS["ema_halflife_images"],
    ema_rampup_ratio: float = DEFAULTS["ema_rampup_ratio"],
    p_mean: float = DEFAULTS["p_mean"],
    p_std: float = DEFAULTS["p_std"],
    checkpoint_images: int = 16_000,
    log_images: int = 1_600,
    stop_after_images: int | None = None,
    num_samples: int = 64,
) -> dict[str, Any]:
    """Train (or resume, or return at once when finished). Returns {"status": "finished" | "interrupted",
    "images_seen", "seconds", "out", "state"}. `stop_after_images` ends this call early (state saved, status
    "interrupted") after that many images, for time-sliced jobs."""
    for key, value in (("total_images", total_images), ("batch", batch), ("checkpoint_images", checkpoint_images)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"train-teacher: '{key}' must be a positive integer, got {value!r}")
    if not lr > 0:
        raise ValueError(f"train-teacher: 'lr' must be positive, got {lr!r}")
    out, state_dir = Path(out), Path(state_dir)
    state_path = state_dir / STATE_FILE

    ds = ImageDataset(dataset)  # lazy: a finished run must not pay for decoding every image
    if conditional and ds.label_dim == 0:
        raise ValueError(f"train-teacher: --conditional needs class labels, but {dataset} has no dataset.json labels")
    network = preset(
        preset_name,
        img_resolution=ds.resolution,
        img_channels=ds.channels,
        label_dim=ds.label_dim if conditional else 0,
    )
    settings = {
        "dataset": str(Path(dataset).resolve()),
        "network": network,
        "batch": batch,
        "lr": lr,
        "lr_rampup_images": lr_rampup_images,
        "ema_halflife_images": ema_halflife_images,
        "ema_rampup_ratio": ema_rampup_ratio,
        "p_mean": p_mean,
        "p_std": p_std,
        "seed": seed,
    }
    with WriterLock(state_dir, "train-teacher"):  # one writer per state folder; released on return or death
        remove_orphaned_temps(state_dir)  # temporary files of saves a kill interrupted
        loaded = load_state(state_path, STATE_FORMAT, who="train-teacher")
        state = loaded[0] if loaded else None
        if state is not None:
            for key in RESULT_KEYS:
                if state["settings"].get(key) != settings[key]:
                    raise ValueError(
                        f"{state_path}: saved '{key}' = {state['settings'].get(key)!r} differs from this run's "
                        f"{settings[key]!r}; use another --state-dir or delete the state to start over"
                    )
            done = state["images_seen"] >= total_images and out.exists()
            if done and (samples_png is None or Path(samples_png).exists()):
                seen, spent = int(state["images_seen"]), float(state["seconds"])
                return {"status": "finished", "images_seen": seen, "seconds": spent, "out": str(out),
                        "state": str(state_path)}  # fmt: skip

        ds = ImageDataset(dataset, preload=True)
        torch.manual_seed(seed)
        net = build_network(network)
        ema = build_network(network)
        ema.load_state_dict(net.state_dict())
        ema.requires_grad_(False).eval()
        optimizer = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
        generator = torch.Generator().manual_seed(seed)
        images_seen, seconds = 0, 0.0
        if state is not None:
            net.load_state_dict(state["net"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            images_seen, seconds = int(state["images_seen"]), float(state["seconds"])

        def save():
            save_state(
                {
                    "format": STATE_FORMAT,
                    "settings": settings,
                    "images_seen": images_seen,
                    "seconds": seconds,
                    "net": net.state_dict(),
                    "ema": ema.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                },
                state_path,
            )

        result = {"images_seen": images_seen, "out": str(out), "state": str(state_path)}

        net.train()
        stop_at = total_images if stop_after_images is None else min(total_images, images_seen + stop_after_images)
        next_checkpoint = (images_seen // checkpoint_images + 1) * checkpoint_images
        next_log = (images_seen // log_images + 1) * log_images
        status = "finished"
        bar = tqdm(total=total_images, initial=min(images_seen, total_images), unit="img", desc="train-teacher")
        with bar, StopFlag() as stop:  # also covers the final writes: a signal there waits for them
            while images_seen < stop_at:
                start = time.perf_counter()
                for group in optimizer.param_groups:
                    group["lr"] = lr * min(1.0, (images_seen + batch) / max(lr_rampup_images, 1))
                images, labels = ds.sample(batch, generator)
                loss = edm_loss(net, images, labels if conditional else None, generator, p_mean, p_std).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for p in net.parameters():
                    if p.grad is not None:
                        torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
                optimizer.step()
                images_seen += batch
                beta = ema_beta(images_seen, batch, ema_halflife_images, ema_rampup_ratio)
                with torch.no_grad():
                    for p_ema, p_net in zip(ema.parameters(), net.parameters()):
                        p_ema.lerp_(p_net, 1 - beta)
                    for b_ema, b_net in zip(ema.buffers(), net.buffers()):
                        b_ema.copy_(b_net)
                seconds += time.perf_counter() - start
                bar.update(batch)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if images_seen >= next_log or images_seen >= stop_at:
                    record = {"images_seen": images_seen, "loss": loss.item(), "lr": optimizer.param_groups[0]["lr"]}
                    append_jsonl({**record, "seconds": round(seconds, 3)}, state_dir / LOG_FILE)
                    next_log += log_images
                if images_seen >= next_checkpoint:
                    save()
                    next_checkpoint += checkpoint_images
                if stop.signum is not None:
                    print(f"train-teacher: signal {stop.signum}: saving the state; rerun to resume", file=sys.stderr)
                    status = "interrupted"
                    break
            save()
            if status == "finished" and images_seen < total_images:
                status = "interrupted"
            result.update(images_seen=images_seen, seconds=seconds, status=status)
            if status != "finished":
                return result

            meta = {
                "kind": "teacher",
                "dataset": str(Path(dataset).resolve()),
                "images_seen": images_seen,
                "preset": preset_name,
                "conditional": bool(conditional),
                "seed": seed,
                "train_seconds": round(seconds, 1),
            }
            save_network(out, ema, meta=meta)
            if samples_png is not None:
                nrow = ema.label_dim if 2 <= ema.label_dim <= 16 else 8  # conditional: one class per column
                save_grid(sample_teacher(ema, num_samples, seed=seed), samples_png, nrow=nrow)
            return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    parser.add_argument("--dataset", required=True, help="EDM-layout zip or folder (eldistill make-dataset)")
    parser.add_argument("--out", required=True, help="teacher network file (.pt, the EMA weights)")
    parser.add_argument("--state-dir", required=True, help="resumable training state (outside workflow outputs)")
    parser.add_argument("--preset", default=d["preset"], help="network preset of eldistill.nets.PRESETS")
    parser.add_argument("--conditional", action="store_true", help="class-conditional (label_dim from the dataset)")
    parser.add_argument("--total-images", type=int, default=d["total_images"], help="training length in images")
    parser.add_argument("--batch", type=int, default=d["batch"])
    parser.add_argument("--lr", type=float, default=d["lr"], help="Adam learning rate after the ramp-up")
    parser.add_argument("--lr-rampup-images", type=int, default=d["lr_rampup_images"])
    parser.add_argument("--ema-halflife-images", type=int, default=d["ema_halflife_images"])
    parser.add_argument("--seed", type=int, default=d["seed"])
    parser.add_argument("--samples-png", default=None, help="write a grid of 64 Heun samples of the teacher")
    parser.add_argument("--checkpoint-images", type=int, default=16_000, help="save the state this often")
    parser.add_argument("--stop-after-images", type=int, default=None, help="end this call early (exit 3)")


def run(args: argparse.Namespace) -> int:
    result = train_teacher(
        args.dataset,
        args.out,
        args.state_dir,
        preset_name=args.preset,
        conditional=args.conditional,
        total_images=args.total_images,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        samples_png=args.samples_png,
        lr_rampup_images=args.lr_rampup_images,
        ema_halflife_images=args.ema_halflife_images,
        checkpoint_images=args.checkpoint_images,
        stop_after_images=args.stop_after_images,
    )
    if result["status"] != "finished":
        print(f"train-teacher: stopped at {result['images_seen']} images; rerun to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"train-teacher: {result['out']} ({result['images_seen']} images, {result['seconds']:.0f} s of training)")
    return 0
