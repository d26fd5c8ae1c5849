"""Images/s of the miniature FID pipeline on the CPU: one-step generation, classifier features, and FID.

    OMP_NUM_THREADS=1 python benchmarks/fid_speed.py [--num 2000] [--batch 256] [--threads 1]
        [--classifier classifier.pt --reference ref.npz]   # else both are built from the digits miniature

Prints one JSON line, with generation's FLOPs per image and the FLOP rate it reaches per CPU second (the
miniature net is compute-bound: 36.6 MFLOP per 16x16 image, 34-55 GFLOP/s of CPU on one core); the generator is an
untrained miniature teacher network (speed does not depend on its weights). The setup (dataset, classifier,
reference) is not timed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=2000, help="generated images")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--classifier", default=None)
    parser.add_argument("--reference", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from eldistill.data.miniature import make_dataset
    from eldistill.metrics import MINI, frechet_distance, load_reference
    from eldistill.metrics.classifier import ClassifierFeatures, train_classifier
    from eldistill.metrics.evaluate import generate_uint8, generated_stats
    from eldistill.metrics.refstats import reference_stats
    from eldistill.nets import build_network, preset

    work = Path(tempfile.mkdtemp(prefix="fid_speed-"))
    if args.classifier is None or args.reference is None:
        dataset = make_dataset("digits", work / "digits16.zip", resolution=16, channels=1)
        args.classifier = work / "classifier.pt"
        train_classifier(dataset, args.classifier, epochs=4)
        args.reference = work / "ref.npz"
        reference_stats(dataset, MINI, args.reference, feature_net=args.classifier)
    features, ref = ClassifierFeatures(args.classifier), load_reference(args.reference)
    net = build_network(preset("mini")).eval()
    seeds = range(args.num)

    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, args.num, args.batch):
        images = generate_uint8(net, 2.5, list(seeds[i : i + args.batch]))
    generation, generation_cpu = time.perf_counter() - start, time.process_time() - cpu
    # Why generation costs what it does: a conv net's work is its parameters x pixels, whatever its size on disk
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        generate_uint8(net, 2.5, [0])
    flop_per_image = counter.get_total_flops()

    images = images.repeat(1, 3, 1, 1).to(torch.float32)
    start = time.perf_counter()
    for _ in range(0, args.num, args.batch):
        features(images)
    feature_time = time.perf_counter() - start

    start = time.perf_counter()
    stats = generated_stats(net, 2.5, seeds, features, args.batch, "cpu", "fid_speed")
    fid = frechet_distance(*stats.mu_sigma(), ref.mu, ref.sigma)
    total = time.perf_counter() - start
    print(json.dumps({
        "num_images": args.num, "batch": args.batch, "threads": args.threads,
        "generation_img_per_s": round(args.num / generation, 1),
        "generation_img_per_cpu_s": round(args.num / generation_cpu, 1),
        "generation_mflop_per_image": round(flop_per_image / 1e6, 2),
        "generation_gflop_per_cpu_s": round(flop_per_image * args.num / generation_cpu / 1e9, 1),
        "features_img_per_s": round(args.num / feature_time, 1),
        "end_to_end_img_per_s": round(args.num / total, 1),
        "fid_mini_untrained": round(fid, 2), "resolution": net.img_resolution,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
