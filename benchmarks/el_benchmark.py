"""Time and peak memory of one Embedding-Loss forward+backward (default: the 4 x 4 ensemble).

    python benchmarks/el_benchmark.py                       # B in {16, 64, 256} at 3x32x32 and 3x64x64, + B=8 at 32
    python benchmarks/el_benchmark.py --songunet            # also the EL overhead on one SiD iteration at CIFAR shape
    python benchmarks/el_benchmark.py --device cuda --threads 8

Each configuration runs in its own process, so its peak memory is its own: the increase of the peak
(CPU: the process's peak RSS; CUDA: torch.cuda.max_memory_allocated) over what EL and the inputs
already held, i.e. the activations and gradients of the passes.
Time is the median over --repeats timed passes after one warm-up.
A SiD iteration costs about four forward+backward passes of the teacher's network (DESIGN.md), so
--songunet reports EL / (4 x fwd+bwd of the 56 M DDPM++ of EDM at the same batch), the issue's 10 % budget.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

CONFIGS = [(32, 8), (32, 16), (32, 64), (32, 256), (64, 16), (64, 64), (64, 256)]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def time_passes(step, repeats: int, device: str) -> tuple[dict, float]:
    """({"seconds": median wall time, "cpu_seconds": median process CPU time}, peak memory MB) of step()
    after one warm-up pass. On a shared CPU machine the CPU time is the fair number: it ignores the time
    spent waiting for a core."""
    base = _peak_rss_mb()  # before the first pass: its activations are the peak we want
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    step()
    _sync(device)
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        _sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _peak_rss_mb()) - base
    return {"seconds": statistics.median(wall), "cpu_seconds": statistics.median(cpu)}, peak


def one_el(resolution: int, batch: int, args) -> dict:
    from eldistill.embedding import EmbeddingLoss

    el = EmbeddingLoss(
        archs=args.archs.split(","), inits_per_arch=args.inits, working_size=args.working_size, in_channels=3
    ).to(args.device)
    gen = torch.Generator(device=args.device).manual_seed(0)
    x_gen = (torch.rand(batch, 3, resolution, resolution, generator=gen, device=args.device) * 2 - 1).requires_grad_()
    x_real = torch.rand(batch, 3, resolution, resolution, generator=gen, device=args.device) * 2 - 1

    def step():
        x_gen.grad = None
        el(x_gen, x_real)[0].backward()

    seconds, peak = time_passes(step, args.repeats, args.device)
    return {
        "what": "EL",
        "resolution": resolution,
        "batch": batch,
        "K": len(el.names),
        **seconds,
        "peak_mb": peak,
    }


def one_songunet(batch: int, args) -> dict:
    from eldistill.nets import build_network, preset

    net = build_network(preset("cifar10")).to(args.device)
    gen = torch.Generator(device=args.device).manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=gen, device=args.device)
    sigma = torch.full((batch,), 2.5, device=args.device)

    def step():
        net.zero_grad(set_to_none=True)
        net(x, sigma).square().mean().backward()

    seconds, peak = time_passes(step, max(1, args.repeats // 2), args.device)
    return {"what": "SongUNet-56M", "resolution": 32, "batch": batch, "K": 0, **seconds, "peak_mb": peak}


def child(args) -> None:
    torch.set_num_threads(args.threads)
    if args.one == "songunet":
        print(json.dumps(one_songunet(args.batch, args)))
    else:
        print(json.dumps(one_el(int(args.one), args.batch, args)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--archs", default="cnn,multiscale,resnet,attention")
    p.add_argument("--inits", type=int, default=4)
    p.add_argument("--working-size", type=int, default=32)
    p.add_argument("--configs", default=",".join(f"{r}x{b}" for r, b in CONFIGS), help="RESxBATCH,...")
    p.add_argument("--songunet", action="store_true", help="also time the CIFAR-10 teacher net at batch 8")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        return child(args)
    jobs = [(r, int(b)) for r, b in (c.split("x") for c in args.configs.split(","))]
    jobs = [(str(r), b) for r, b in jobs] + ([("songunet", 8)] if args.songunet else [])
    flags = ["--device", args.device, "--threads", str(args.threads), "--repeats", str(args.repeats)]
    flags += ["--archs", args.archs, "--inits", str(args.inits), "--working-size", str(args.working_size)]
    rows = []
    for one, batch in jobs:  # short list; each line is printed as it finishes
        cmd = [sys.executable, __file__, "--one", one, "--batch", str(batch), *flags]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"{r['what']:>13} 3x{r['resolution']}x{r['resolution']} B={r['batch']:<4} K={r['K']:<3} "
            f"wall {r['seconds'] * 1000:9.1f} ms  cpu {r['cpu_seconds'] * 1000:9.1f} ms  peak +{r['peak_mb']:8.1f} MB",
            flush=True,
        )
    print(f"device={args.device} threads={args.threads} torch={torch.__version__} working_size={args.working_size}")
    unet = [r for r in rows if r["what"] != "EL"]
    el8 = [r for r in rows if r["what"] == "EL" and r["resolution"] == 32 and r["batch"] == 8]
    if unet and el8:
        key = "cpu_seconds" if args.device == "cpu" else "seconds"
        share = el8[0][key] / (4 * unet[0][key])
        print(
            f"EL at B=8, 3x32x32 = {share * 100:.1f} % of one SiD iteration (4 x SongUNet fwd+bwd, {key}); budget 10 %"
        )


if __name__ == "__main__":
    main()
