"""Peak memory and speed of evaluating a latent (EDM2) generator: one-step generation, VAE decoding to uint8
pixels and the detector's features, streamed in batches (eldistill.metrics.evaluate.generated_stats). The peak
must not grow with the number of images (50,000 per FID at paper scale): each --n runs in a fresh process and
reports its peak resident memory.

    OMP_NUM_THREADS=1 python benchmarks/latent_eval_memory.py --n 256 2048
    python benchmarks/latent_eval_memory.py --n 5000 50000 --latent-res 64 --device cuda   # sd-vae scale

Stand-ins (random weights; memory and speed do not depend on them): a small EDM2 U-Net generator over
4 x R x R latents, a diffusers AutoencoderKL with sd-vae-ft-mse's 8x up-sampling but narrow channels, and a
2048-d linear detector. --latent-res 64 gives 512 x 512 images, the paper's size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def child(n: int, latent_res: int, batch: int, device: str) -> dict:
    from eldistill.metrics.evaluate import generated_stats
    from eldistill.nets import build_network
    from eldistill.nets.latent import LatentCodec
    from eldistill.rehearsal.standins import tiny_autoencoderkl

    torch.manual_seed(0)
    net = build_network(
        {"class_name": "EDM2Precond", "img_resolution": latent_res, "img_channels": 4, "label_dim": 10,
         "use_fp16": False, "model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": []}
    ).to(device).eval()  # fmt: skip
    vae = tiny_autoencoderkl(channels=16, norm_groups=8)
    codec = LatentCodec(vae, batch_size=4).to(device)  # EDM2 decodes 4 images per VAE call when generating

    class Detector:
        dim = 2048

        def __init__(self):
            self.proj = torch.nn.Linear(3, 2048).to(device)

        @torch.no_grad()
        def __call__(self, x):
            return self.proj(x.mean(dim=(2, 3)) / 255)

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    stats = generated_stats(net, 2.5, range(n), Detector(), batch, device, f"n={n}", codec=codec)
    seconds = time.perf_counter() - start
    assert stats.count == n
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"n": n, "image_px": latent_res * 8, "peak_rss_mb": round(peak, 1), "rss_before_mb": round(base, 1),
            "images_per_s": round(n / seconds, 1), "device": device}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[256, 2048], help="image counts, one process each")
    parser.add_argument("--latent-res", type=int, default=8, help="latent side (64 = 512x512 images)")
    parser.add_argument("--batch", type=int, default=64, help="images per generation batch (evaluate --batch)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.n[0], args.latent_res, args.batch, args.device)))
        return
    rows = []
    for n in args.n:
        cmd = [sys.executable, __file__, "--child", "--n", str(n), "--latent-res", str(args.latent_res)]
        cmd += ["--batch", str(args.batch), "--device", args.device]
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=Path(tmp))
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    growth = rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]
    print(f"peak RSS growth from n={rows[0]['n']} to n={rows[-1]['n']}: {growth:+.1f} MB")


if __name__ == "__main__":
    main()
