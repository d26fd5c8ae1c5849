"""`eldistill evaluate`: FID of a run's generator (and of every snapshot) under a named protocol.

Images are drawn the way EDM's generate.py does it, one seed per image (so a number does not depend on
the batch size or the device count): z ~ N(0, I) from torch.Generator().manual_seed(seed); conditional
models get class-balanced labels (seed % label_dim); outputs are quantised with EDM's uint8 rule. Seed
range k of a checkpoint is [k * N, (k + 1) * N), as EDM and the paper do for "minimum of 3 seeds".

Latent generators (EDM2, ImageNet 512) are decoded to uint8 pixels with the Stable Diffusion VAE (`--vae`, a
local diffusers folder) exactly as EDM2 does before its detectors (clamp(0, 1) * 255, truncated), in batches,
so memory does not grow with the number of images. Under the paper protocol FD_DINOv2 (EDM2's second metric)
is recorded too when its detector file is present and the reference has its statistics (EDM2's img512.pkl).

RUN_DIR/fid.jsonl gets one record per evaluated checkpoint (kind "snapshot") and one record with the
cell's reported number (kind "final"); an evaluation already recorded is reused, never recomputed.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from eldistill.generator import one_step, to_uint8
from eldistill.io import append_jsonl, atomic_write_bytes, read_jsonl
from eldistill.metrics.fid import FeatureStats, inception_score
from eldistill.metrics.protocols import (
    FD_DINOV2,
    check_num_samples,
    file_digest,
    get_protocol,
    load_feature_net,
    load_reference,
    load_second_detector,
)

AGGREGATIONS = ("final", "min-of-3-seeds", "best-snapshot")
GRID_SEEDS = range(64)  # samples.png: an 8x8 grid of the same seeds for every run


class UnreadableCheckpoint(ValueError):
    """A checkpoint that cannot be loaded (truncated, damaged, foreign); the message names it."""


def load_generator(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    from eldistill.checkpoints import load_network

    net, meta = load_network(path, map_location=device)
    if meta.get("kind") != "generator" or "sigma_init" not in meta:
        raise ValueError(f"{path}: not a generator checkpoint (meta needs kind='generator' and 'sigma_init')")
    return net.eval(), meta


def seed_labels(net: torch.nn.Module, seeds: list[int]) -> torch.Tensor | None:
    """Class-balanced one-hot labels (seed % label_dim), or None for an unconditional model."""
    label_dim = int(getattr(net, "label_dim", 0) or 0)
    if label_dim == 0:
        return None
    return torch.nn.functional.one_hot(torch.tensor(seeds) % label_dim, label_dim).to(torch.float32)


@torch.no_grad()
def generate_uint8(
    net: torch.nn.Module, sigma_init: float, seeds: list[int], device: str = "cpu", codec=None
) -> torch.Tensor:
    """uint8 images (B, C, H, W) on `device`, one seeded noise draw per image; a latent generator's output is
    decoded to RGB pixels with `codec` (eldistill.nets.latent.LatentCodec), as EDM2's encoder.decode does."""
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    z = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    labels = seed_labels(net, seeds)
    images = one_step(net, z.to(device), sigma_init, None if labels is None else labels.to(device))
    if codec is not None:
        return codec.decode_uint8(images)
    return to_uint8(images)


def latent_codec(net: torch.nn.Module, meta: dict, vae: str | Path | None, device: str, batch_size: int = 4):
    """The VAE decoder a latent generator needs (None for pixel generators), with the scale/bias recorded in
    the generator's meta (from its EDM2 teacher). EDM2 decodes 4 images per VAE call when generating."""
    if net.img_channels in (1, 3):
        return None
    if vae is None:
        raise ValueError(
            f"the generator makes {net.img_channels}-channel latents; pass --vae DIR (a local copy of "
            "stabilityai/sd-vae-ft-mse) to decode them to pixels before the detector"
        )
    from eldistill.nets.latent import LatentCodec

    codec = LatentCodec.from_pretrained(vae, encoder_info=meta.get("encoder"), batch_size=batch_size).to(device)
    if codec.latent_channels != net.img_channels:
        raise ValueError(f"VAE {vae}: decodes {codec.latent_channels} channels, the generator makes {net.img_channels}")
    return codec


def generated_stats(
    net,
    sigma_init,
    seeds: range,
    fnet,
    batch_size: int,
    device: str,
    desc: str,
    probs: list | None = None,
    codec=None,
    second: tuple | None = None,
    generate=None,
) -> FeatureStats:
    """Feature statistics of the generator's images for `seeds` (generation, decoding of latents with `codec`,
    features; one tqdm bar); class probabilities are appended to `probs` when it is a list (for the Inception
    Score); `second` = (detector, FeatureStats) accumulates a second metric's features of the same images.
    `generate(seeds)` -> uint8 images replaces the one-step generator (the teacher's own sampler,
    `evaluate-teacher`)."""
    stats = FeatureStats(fnet.dim)
    with tqdm(total=len(seeds), desc=desc, unit="img") as bar:
        for start in range(0, len(seeds), batch_size):
            batch = list(seeds[start : start + batch_size])
            images = generate(batch) if generate else generate_uint8(net, sigma_init, batch, device, codec)
            if images.shape[1] == 1:
                images = images.repeat(1, 3, 1, 1)  # greyscale -> RGB, as clean-fid/EDM read the dataset
            # what clean-fid's get_batch_features does, without importing cleanfid.fid: that import pulls in
            # torchvision.models and torch._dynamo, ~2 s of CPU in every evaluation job (measured, 1 core)
            with torch.no_grad():
                stats.update(fnet(images.to(torch.float32).to(device)).cpu().numpy())
            if second is not None:
                second[1].update(second[0](images.to(torch.float32)).cpu().numpy())
            if probs is not None:
                probs.append(fnet.probs(images.to(torch.float32)).cpu().numpy())
            bar.update(len(batch))
    return stats


def seed_string(seeds: range) -> str:
    return f"{seeds.start}-{seeds.stop - 1}"


def save_grid(net, sigma_init: float, path: Path, device: str = "cpu", codec=None) -> Path:
    """An 8x8 PNG grid of the fixed GRID_SEEDS (latents decoded with `codec`)."""
    from PIL import Image

    images = generate_uint8(net, sigma_init, list(GRID_SEEDS), device, codec).cpu()
    c, h, w = images.shape[1:]
    grid = images.reshape(8, 8, c, h, w).permute(0, 3, 1, 4, 2).reshape(8 * h, 8 * w, c).numpy()
    image = Image.fromarray(grid[:, :, 0] if c == 1 else grid, "L" if c == 1 else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write_bytes(buffer.getvalue(), path)


def _software() -> str:
    from importlib.metadata import version

    return f"eldistill {version('eldistill')}, clean-fid {version('clean-fid')}, torch {torch.__version__}"


def _cell_id(run_dir: Path, meta: dict) -> str:
    if meta.get("cell_id"):
        return str(meta["cell_id"])
    config = run_dir / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text())
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and data.get("cell_id"):
            return str(data["cell_id"])
    return run_dir.name


def evaluate_run(
    run_dir: str | Path,
    protocol: str,
    reference: str | Path,
    state_dir: str | Path | None = None,
    feature_net: str | Path | None = None,
    num_samples: int | None = None,
    snapshots: bool = False,
    aggregation: str = "final",
    device: str = "cpu",
    batch_size: int = 256,
    with_inception_score: bool = False,
    vae: str | Path | None = None,
    fd_dinov2: str | Path | None = None,
) -> dict:
    """Evaluate RUN_DIR/generator.pt (and the snapshots), append to RUN_DIR/fid.jsonl, write samples.png.
    `vae`: the VAE folder that decodes a latent generator; `fd_dinov2`: the DINOv2 detector file (default:
    the cache, if present). Returns the "final" record (the cell's reported number)."""
    run_dir = Path(run_dir)
    proto = get_protocol(protocol)
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation {aggregation!r} is unknown; choose one of {', '.join(AGGREGATIONS)}")
    num_samples = proto.default_samples if num_samples is None else int(num_samples)
    check_num_samples(proto, num_samples)
    final_path = run_dir / "generator.pt"
    if not final_path.is_file():
        raise ValueError(f"generator checkpoint not found: {final_path}")
    snapshot_paths: list[Path] = []
    if snapshots or aggregation == "best-snapshot":
        if state_dir is None:
            raise ValueError("--state-dir is required to evaluate snapshots (state_dir/snapshots/generator-*.pt)")
        snapshot_paths = sorted((Path(state_dir) / "snapshots").glob("generator-*.pt"))
        if not snapshot_paths:
            print(f"note: no snapshots in {state_dir}/snapshots; evaluating generator.pt only", file=sys.stderr)
    fnet = load_feature_net(proto, feature_net, device)
    ref = load_reference(reference)
    ref.check(proto, fnet.id, reference)
    dnet, dref = load_second_detector(proto, fd_dinov2, device), None
    if dnet is not None:
        try:
            dref = load_reference(reference, FD_DINOV2)
        except ValueError as e:
            if fd_dinov2 is not None:  # asked for explicitly: say why it cannot be computed
                raise
            print(f"note: no FD_DINOv2 ({e})", file=sys.stderr)
            dnet = None

    log_path = run_dir / "fid.jsonl"
    base = {"protocol": proto.name, "feature_net": fnet.id, "num_samples": num_samples, "reference": ref.ref_id}
    if dnet is not None:
        base["fd_dinov2_net"] = dnet.id
    if vae is not None:
        base["latent_decoder"] = f"{Path(vae).name}:{file_digest(Path(vae) / 'config.json')}"
    codecs: dict = {}  # one VAE per scale/bias
    # (checkpoint digest, seeds) -> record, from earlier calls with the same protocol settings. Keyed by content,
    # not path: the last snapshot and generator.pt are the same bytes (the final EMA), measured once
    done = {}
    if log_path.is_file():
        for rec in read_jsonl(log_path):
            if rec.get("kind") == "snapshot" and all(rec.get(k) == v for k, v in base.items()):
                done[(rec.get("checkpoint_digest"), rec.get("seeds"))] = rec

    # each file's digest and the last generator read, once per evaluation: min-of-3-seeds and samples.png reuse
    # them instead of hashing, checking and loading the same file again (seconds each for a paper-scale EDM2
    # generator); one network in memory at a time
    digests: dict[Path, str] = {}
    last_read: dict[str, tuple[torch.nn.Module, dict]] = {}

    def digest_of(path: Path) -> str:
        if path not in digests:
            digests[path] = file_digest(path, 16)
        return digests[path]

    def read_generator(path: Path) -> tuple[torch.nn.Module, dict]:
        digest = digest_of(path)
        if digest not in last_read:
            last_read.clear()
            last_read[digest] = load_generator(path, device)
        return last_read[digest]

    def codec_for(net, meta):
        key = json.dumps(meta.get("encoder"), sort_keys=True)
        if net.img_channels not in (1, 3) and key not in codecs:
            codecs[key] = latent_codec(net, meta, vae, device)
        return codecs.get(key) if net.img_channels not in (1, 3) else None

    def evaluate(path: Path, seeds: range) -> dict:
        digest = digest_of(path)
        key = (digest, seed_string(seeds))
        if key in done and (not with_inception_score or "is_mean" in done[key]):
            return {**done[key], "checkpoint": str(path)}
        try:
            net, meta = read_generator(path)
        except ValueError as e:
            raise UnreadableCheckpoint(str(e)) from None
        codec = codec_for(net, meta)
        fnet.check_images(3 if codec is not None else net.img_channels, net.img_resolution)
        probs = [] if with_inception_score else None
        second = (dnet, FeatureStats(dnet.dim)) if dnet is not None else None
        desc = f"FID {path.name}"
        stats = generated_stats(net, meta["sigma_init"], seeds, fnet, batch_size, device, desc, probs, codec, second)
        record = {
            "fid": stats.distance_to(ref.mu, ref.sigma),
            **({FD_DINOV2: second[1].distance_to(dref.mu, dref.sigma)} if second else {}),
            **base,
            "seeds": seed_string(seeds),
            "aggregation": "single",
            "checkpoint": str(path),
            "checkpoint_digest": digest,
            "images_seen": meta.get("images_seen"),
            "iterations": meta.get("iterations"),
            "kind": "snapshot",
            "cell_id": _cell_id(run_dir, meta),
            "paper_comparable": proto.paper_comparable,
            "software": _software(),
            "device": str(device),
        }
        if probs is not None:
            # IS with the protocol's own classifier: TF-Inception (paper) or the miniature classifier
            record["is_mean"], record["is_std"] = inception_score(np.concatenate(probs))
        append_jsonl(record, log_path)
        done[key] = record
        return record

    first = range(0, num_samples)
    for path in list(snapshot_paths):
        try:
            evaluate(path, first)
        except UnreadableCheckpoint as e:  # one damaged snapshot must not block the cell's number
            print(f"warning: skipping a snapshot that cannot be read: {e}", file=sys.stderr)
            snapshot_paths.remove(path)
    final = evaluate(final_path, first)
    if aggregation == "min-of-3-seeds":
        runs = [final] + [evaluate(final_path, range(k * num_samples, (k + 1) * num_samples)) for k in (1, 2)]
        chosen = min(runs, key=lambda r: r["fid"])
        detail = {"fid_per_seed_range": {r["seeds"]: r["fid"] for r in runs}}
    elif aggregation == "best-snapshot":
        runs = [evaluate(p, first) for p in snapshot_paths] + [final]
        chosen = min(runs, key=lambda r: r["fid"])
        detail = {"fid_final_checkpoint": final["fid"], "num_checkpoints_compared": len(runs)}
    else:
        runs, chosen, detail = [final], final, {}
    seeds = ",".join(r["seeds"] for r in runs) if aggregation == "min-of-3-seeds" else chosen["seeds"]
    record = {**chosen, "seeds": seeds, "aggregation": aggregation, "kind": "final", **detail}
    previous = [r for r in read_jsonl(log_path) if r.get("kind") == "final"]
    if not previous or previous[-1] != record:
        append_jsonl(record, log_path)  # the last "final" record is the cell's number

    net, meta = read_generator(final_path)
    save_grid(net, meta["sigma_init"], run_dir / "samples.png", device, codec_for(net, meta))
    return record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="RUN_DIR holding generator.pt; fid.jsonl and samples.png go here")
    parser.add_argument("--state-dir", default=None, help="STATE_DIR holding snapshots/generator-*.pt")
    parser.add_argument("--protocol", required=True, help="fid50k-tf-inception or mini-classifier")
    parser.add_argument("--reference", required=True, help="reference stats: .npz from ref-stats, EDM .npz, EDM2 .pkl")
    parser.add_argument(
        "--feature-net",
        default=None,
        help="mini-classifier: the classifier .pt (required); fid50k-tf-inception: inception-2015-12-05.pt "
        "(default: $ELDISTILL_INCEPTION, ~/.cache/eldistill/, /tmp/)",
    )
    parser.add_argument("--num-samples", type=int, default=None, help="generated images per FID (paper: 50000)")
    parser.add_argument("--snapshots", action="store_true", help="also evaluate every snapshot (convergence curve)")
    parser.add_argument("--aggregation", choices=AGGREGATIONS, default="final")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch", type=int, default=256, help="images per generation/feature batch")
    parser.add_argument(
        "--vae", default=None, help="latent generators (ImageNet 512): local VAE folder (sd-vae-ft-mse) to decode"
    )
    parser.add_argument(
        "--fd-dinov2",
        default=None,
        help="paper protocol: DINOv2 detector dinov2-vitl14.pt for FD_DINOv2 (default: $ELDISTILL_DINOV2 or the "
        "cache, when present)",
    )
    parser.add_argument(
        "--inception-score",
        action="store_true",
        help="also record IS (is_mean, is_std over 10 splits) with the protocol's classifier",
    )


def run(args: argparse.Namespace) -> int:
    try:
        record = evaluate_run(
            args.run,
            args.protocol,
            args.reference,
            state_dir=args.state_dir,
            feature_net=args.feature_net,
            num_samples=args.num_samples,
            snapshots=args.snapshots,
            aggregation=args.aggregation,
            device=args.device,
            batch_size=args.batch,
            with_inception_score=args.inception_score,
            vae=args.vae,
            fd_dinov2=args.fd_dinov2,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    label = "" if record["paper_comparable"] else " (miniature protocol: not comparable with paper FIDs)"
    fd = f", FD_DINOv2 {record[FD_DINOV2]:.4f}" if FD_DINOV2 in record else ""
    print(
        f"FID {record['fid']:.4f}{fd} [{record['protocol']}, {record['aggregation']}, n={record['num_samples']}]{label}"
    )
    return 0
