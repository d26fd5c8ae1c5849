"""How strong is lambda_EL = 1 next to each distiller's own generator gradient?

Each distiller's generator loss comes in its own units (SiD's generator loss is scaled by lsg = 100 and
summed over pixels, DMD's is a mean, ...), while EL is an MMD^2 of order 1e-2. This script measures, on one
batch from a teacher and a dataset, the norm of the generator-parameter gradient of the distiller's loss and
of EL (weight 1), and prints the lambda_EL that makes EL's gradient a chosen fraction of the distiller's.
At initialisation the fake score equals the teacher and DI/DMD gradients vanish, so the networks are taken
from the training state of a finished EL-off run of each distiller (`--states`). The configs' per-distiller
`el_weight` values come from this measurement.

    OMP_NUM_THREADS=1 python benchmarks/el_weight_calibration.py --teacher T.pt --dataset D.zip \
        --states results/mini/state [--fraction 0.25]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from eldistill.cell import DISTILLERS, ELConfig
from eldistill.checkpoints import load_network
from eldistill.data import ImageDataset
from eldistill.distillers import build_distiller
from eldistill.embedding import EmbeddingLoss
from eldistill.generator import one_step
from eldistill.train import PhaseRandom, RoundNoise, real_batch
from eldistill.untrusted.torch_files import load_torch_file


def grad_norm(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads if g is not None])))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--fraction", type=float, default=0.25, help="target |grad EL| / |grad distiller|")
    p.add_argument("--working-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--states", required=True, help="folder of per-cell state dirs (results/<scale>/state)")
    args = p.parse_args()

    teacher, _ = load_network(args.teacher)
    ds = ImageDataset(args.dataset)
    el = EmbeddingLoss.from_config(ELConfig(weight=1.0, working_size=args.working_size), teacher.img_channels)
    shape = (teacher.img_channels, teacher.img_resolution, teacher.img_resolution)
    label_dim = teacher.label_dim
    print(f"{'distiller':<10} {'|grad distiller|':>17} {'|grad EL (w=1)|':>16} {'ratio':>10} {'el_weight':>10}")
    for name in DISTILLERS:
        # sid2a starts from a SiD generator; from the teacher it is SiDA with its own defaults
        d = build_distiller(name, teacher.eval(), init_generator=teacher if name == "sid2a" else None)
        states = sorted(Path(args.states).glob(f"{name}-noel-*/training-state.pt"))
        if not states:
            print(f"{name:<10} no finished EL-off run under {args.states}")
            continue
        saved = load_torch_file(states[0], "cpu", "training state")["nets"]
        for key, net in d.nets.items():
            net.load_state_dict(saved[key])
        generator = d.nets["generator"].requires_grad_(True)
        params = [q for q in generator.parameters() if q.requires_grad]
        noise = RoundNoise(PhaseRandom(args.seed, args.batch, torch.device("cpu")), 0, args.batch)
        z = noise.randn(*shape)
        labels = None
        if label_dim:
            labels = torch.nn.functional.one_hot(noise.randint(0, label_dim), label_dim).float()
        x_gen = one_step(generator, z, d.sigma_init, labels)
        real, real_labels = real_batch(ds, noise.randint(0, len(ds)), label_dim, torch.device("cpu"))
        per_sample, _ = d.loss("generator", x_gen, labels, real, real_labels, noise, images_seen=10**9)
        g_dist = grad_norm(per_sample.sum() / args.batch, params)
        g_el = grad_norm(el(x_gen, real)[0], params)
        weight = args.fraction * g_dist / g_el
        print(f"{name:<10} {g_dist:>17.4g} {g_el:>16.4g} {g_el / g_dist:>10.3g} {weight:>10.3g}")


if __name__ == "__main__":
    main()
