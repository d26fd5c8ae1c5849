"""Seconds per training iteration of each distiller without and with the Embedding Loss, for each EL scope
(`global`: the global-batch EL by gradient caching; `round`: the per-round estimate), and the overhead
ratios (with / without), at the miniature size and at CIFAR-10 shape (EDM's 56 M DDPM++ SongUNet).
With --batch-gpu below the batch the global scope pays a second generator forward and embedder forward for
every round but the last (eldistill.global_el); `global / round` compares the two, and the columns
`extra ...` measure that cost apart (a timed no-graph generator forward + embedder forward at batch_gpu,
times rounds - 1, over the no-EL iteration), which single-iteration timings on a busy CPU cannot resolve.

    OMP_NUM_THREADS=2 python benchmarks/distill_speed.py --sizes mini --batch 32
    OMP_NUM_THREADS=1 python benchmarks/distill_speed.py --sizes mini --distillers sid --batch 32 --batch-gpu 8
    OMP_NUM_THREADS=2 python benchmarks/distill_speed.py --sizes cifar --distillers sid --batch 8 --iters 2
    python benchmarks/distill_speed.py --sizes cifar --batch 256 --device cuda --precision bf16

Networks have random weights (speed does not depend on them); the dataset is random noise images written to
a temporary folder. Each timing is the median over --iters iterations after --warmup iterations of the real
training loop (eldistill.train.Trainer.iteration): wall time on a GPU, process CPU time on the CPU (run with
OMP_NUM_THREADS=1 there, so that it equals the compute of one core whatever else the machine runs).
Budget from the issue: overhead <= 1.10 for SiD with the 4 x 4 ensemble.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from eldistill import dist
from eldistill.cell import DISTILLERS, Cell
from eldistill.checkpoints import save_network
from eldistill.generator import one_step
from eldistill.nets import build_network, count_parameters, preset
from eldistill.train import Trainer

SIZES = {
    "mini": dict(name="mini", img_resolution=16, img_channels=1),  # the miniature teacher of config/config.yaml
    "cifar": dict(name="cifar10", img_resolution=32, img_channels=3),  # EDM's CIFAR-10 DDPM++
}
# Arguments that make every term of every distiller run from the first iteration (the costly regime).
ARGS = {
    "sida": {"gan_start_images": 0, "generator_freeze_images": 0},
    "sid2a": {"gan_start_images": 0, "generator_freeze_images": 0},
    "dmd": {"gen_update_ratio": 1},
}


def write_files(folder: Path, size: dict) -> tuple[Path, Path]:
    net = build_network(preset(size["name"], img_resolution=size["img_resolution"], img_channels=size["img_channels"]))
    teacher = save_network(folder / f"{size['name']}.pt", net, meta={"kind": "teacher"})
    data = folder / f"data-{size['name']}"
    data.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    shape = (size["img_resolution"],) * 2 + ((size["img_channels"],) if size["img_channels"] > 1 else ())
    for i in range(64):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(data / f"{i:05d}.png")
    print(f"{size['name']}: {count_parameters(net) / 1e6:.2f} M parameters")
    return teacher, data


def clocks(device: torch.device):
    """(clock, sync): wall time on a GPU; on the CPU process CPU time (wall time there mostly measures the
    other users of a shared machine)."""
    cuda = device.type == "cuda"
    return (time.perf_counter, torch.cuda.synchronize) if cuda else (time.process_time, lambda: None)


@torch.no_grad()
def extra_forward_seconds(trainer: Trainer, reps: int = 5) -> float:
    """What the global-batch EL adds for one round that is generated twice: a generator forward without
    graph and the embedders' forward on its images (median of `reps`, after one untimed call)."""
    clock, sync = clocks(trainer.device)
    trainer.generator.train()
    z = torch.randn(trainer.batch_gpu, *trainer.shape, device=trainer.device)
    labels = torch.zeros(trainer.batch_gpu, trainer.label_dim, device=trainer.device) if trainer.label_dim else None
    times = []
    for i in range(reps + 1):
        sync()
        t = clock()
        with trainer.autocast():
            x = one_step(trainer.generator, z, trainer.distiller.sigma_init, labels)
        trainer.el.features(x)
        sync()
        if i:
            times.append(clock() - t)
    return statistics.median(times)


def time_cell(cell: Cell, device: str, warmup: int, iters: int) -> tuple[float, float, float]:
    """(median seconds per iteration, peak CUDA memory in GiB or nan on the CPU, seconds of the extra
    forwards of one regenerated round or nan without EL)."""
    trainer = Trainer(cell, dist.setup(device=device))
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    clock, sync = clocks(trainer.device)
    times = []
    for i in tqdm(range(warmup + iters), desc=f"{cell.distiller} el={cell.el.weight}", leave=False):
        sync()
        t = clock()
        trainer.iteration()
        sync()
        if i >= warmup:
            times.append(clock() - t)
    peak = torch.cuda.max_memory_allocated(trainer.device) / 2**30 if trainer.device.type == "cuda" else float("nan")
    extra = extra_forward_seconds(trainer) if trainer.el is not None else float("nan")
    return statistics.median(times), peak, extra


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="mini,cifar")
    p.add_argument("--distillers", default=",".join(d for d in DISTILLERS if d != "sid2a"))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batch-gpu", type=int, default=None, help="per-process batch (gradient accumulation)")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--archs", default="cnn,multiscale,resnet,attention")
    p.add_argument("--inits-per-arch", type=int, default=4)
    p.add_argument("--working-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--scopes", default="global,round", help="EL scopes to time (eldistill.cell.ELConfig.scope)")
    args = p.parse_args()
    scopes = args.scopes.split(",")
    runs = [("noEL", 0.0, "global")] + [(f"EL {scope}", 1.0, scope) for scope in scopes]
    labels_el = [label for label, _, _ in runs[1:]]
    if args.device == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size_name in args.sizes.split(","):
            size = SIZES[size_name]
            teacher, data = write_files(Path(tmp), size)
            for distiller in args.distillers.split(","):
                seconds, peak, extra = {}, {}, {}
                for label, weight, scope in runs:
                    cell = Cell.from_dict(
                        dict(
                            distiller=distiller,
                            teacher=str(teacher),
                            dataset=str(data),
                            batch=args.batch,
                            batch_gpu=args.batch_gpu,
                            total_images=10**9,
                            precision=args.precision,
                            distiller_args=ARGS.get(distiller, {}),
                            el=dict(
                                weight=weight,
                                archs=args.archs.split(","),
                                inits_per_arch=args.inits_per_arch,
                                working_size=args.working_size,
                                scope=scope,
                            ),
                            run_dir=str(Path(tmp) / "run"),
                            state_dir=str(Path(tmp) / "state"),
                        )
                    )
                    seconds[label], peak[label], extra[label] = time_cell(cell, args.device, args.warmup, args.iters)
                    print(f"{size_name:6s} {distiller:6s} {label:10s} {seconds[label]:8.3f} s/it", flush=True)
                rows.append((size_name, distiller, seconds, peak, extra[labels_el[0]] if labels_el else float("nan")))
    k = len(args.archs.split(",")) * args.inits_per_arch
    split = f"batch_gpu {args.batch_gpu}" if args.batch_gpu else "one round"
    print(
        f"\nbatch {args.batch} ({split}), {args.device}, {args.precision}, EL: K={k} embedders at {args.working_size}px"
    )
    labels = [label for label, _, _ in runs]
    head = ["size", "distiller"] + [f"s/it {x}" for x in labels] + [f"overhead {x}" for x in labels[1:]]
    if len(scopes) == 2:
        head.append(f"{scopes[0]} / {scopes[1]}")
    # The global scope's own cost, measured apart: (rounds - 1) x (generator forward + embedder forward).
    head += ["extra fwd s/round", "global extra s/it", "global extra / noEL s/it"]
    head += [f"GiB {x}" for x in labels]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    rounds = args.batch // (args.batch_gpu or args.batch)
    for size_name, distiller, sec, mem, extra_round in rows:
        cells = [size_name, distiller] + [f"{sec[x]:.3f}" for x in labels]
        cells += [f"{sec[x] / sec['noEL']:.3f}" for x in labels[1:]]
        if len(scopes) == 2:
            cells.append(f"{sec[labels[1]] / sec[labels[2]]:.3f}")
        extra_it = (rounds - 1) * extra_round
        cells += [f"{extra_round:.3f}", f"{extra_it:.3f}", f"{extra_it / sec['noEL']:.3f}"]
        cells += [f"{mem[x]:.1f}" for x in labels]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
