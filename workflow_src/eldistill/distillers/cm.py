"""Consistency distillation (CD; anchors A.6): the student f_theta (the generator, EDM-preconditioned, started
from the teacher) maps x_t = x + t*eps to the same point as its target EMA f_theta- maps x_t2, where x_t2 is
one Heun step of the teacher from t down to the next sigma t2 of an N-point Karras grid. x is real data, flipped
left-right with probability 1/2 (`jcm/datasets.py` L75-77). The one-step generator is f_theta(80 z; 80).

Target: with target_ema = 0 (the CIFAR-10 CD recipe) the target is the online network itself under stop-gradient
(`jcm/losses.py` L305-306, L334), evaluated with the same dropout mask as the student call (L323-332); a
target_ema > 0 keeps a separate EMA copy theta- (openai/consistency_models' ImageNet 64 runs).

Distances: "lpips" (the CIFAR-10 CD recipe, `configs/cifar10_ve_cd.py` L20; weights from the cell's lpips
folder), "l2" (mean squared error per sample) or "pseudo_huber" (sqrt(||d||^2 + c^2) - c, c = 0.00054 *
sqrt(C*H*W), the LPIPS-free choice of improved consistency training; the offline default). The student uses
EDM's preconditioning, which meets f(x, sigma_min) = x to within sigma_min."""

from __future__ import annotations

import copy

import torch

from eldistill.distillers.base import Distiller, Phase, as_images, denoise, karras_grid, same_dropout

DISTANCES = ("l2", "pseudo_huber", "lpips")


class CM(Distiller):
    name = "cm"
    DEFAULTS = {
        "sigma_init": 80.0,
        "num_scales": 18,  # N: points of the Karras grid (CIFAR-10 CD: 18)
        "target_ema": 0.95,  # mu of the target network theta- (fixed); 0 = the online network, stop-gradient
        "xflip": True,  # random left-right flip of the real images (`config.data.random_flip`)
        "distance": "pseudo_huber",
        "huber_c": None,  # None = 0.00054 * sqrt(C*H*W)
        "optimizer": "radam",  # openai/consistency_models and ECT use RAdam
    }

    def __init__(self, teacher, args=None, init_generator=None, augment_p=0.0, lpips="", lpips_resize=None):
        super().__init__(teacher, args, init_generator, augment_p, lpips, lpips_resize)
        a = self.args
        if a["distance"] not in DISTANCES:
            raise ValueError(f"distiller_args: 'distance' is {a['distance']!r}; choose one of {', '.join(DISTANCES)}")
        if a["num_scales"] < 2:
            raise ValueError(f"distiller_args: 'num_scales' must be >= 2, got {a['num_scales']}")
        if not 0 <= a["target_ema"] < 1:
            raise ValueError(f"distiller_args: 'target_ema' must be in [0, 1), got {a['target_ema']}")
        self.sigmas = karras_grid(a["num_scales"]).float()  # descending: sigma_max ... sigma_min
        self.target = None
        if a["target_ema"] > 0:
            self.target = copy.deepcopy(self.nets["generator"]).eval().requires_grad_(False)

    @property
    def extra_modules(self):
        return {"target": self.target} if self.target is not None else {}

    def phases(self, images_seen: int, iteration: int) -> list[Phase]:
        return [Phase("generator", ("generator",), needs_real=True, needs_generated=False)]

    def teacher_heun_step(self, x_t, t, t2, labels) -> torch.Tensor:
        """One Heun step of the probability-flow ODE with the teacher, from sigma t to sigma t2 < t."""
        d = (x_t - denoise(self.teacher, x_t, t, labels)) / as_images(t)
        x_e = x_t + as_images(t2 - t) * d
        d2 = (x_e - denoise(self.teacher, x_e, t2, labels)) / as_images(t2)
        return x_t + as_images(t2 - t) * 0.5 * (d + d2)

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.args["distance"] == "lpips":
            return self.lpips(a, b)
        sq = ((a - b) ** 2).flatten(1)
        if self.args["distance"] == "l2":
            return sq.mean(1)
        c = self.args["huber_c"] or 0.00054 * sq.shape[1] ** 0.5
        return (sq.sum(1) + c**2).sqrt() - c

    def loss(self, phase, x_gen, labels, real, real_labels, noise, images_seen):
        if self.args["xflip"]:
            flip = as_images(noise.rand() < 0.5)
            real = torch.where(flip, real.flip(3), real)
        n_idx = noise.randint(0, self.args["num_scales"] - 1)
        sigmas = self.sigmas.to(real.device)
        t, t2 = sigmas[n_idx], sigmas[n_idx + 1]
        x_t = real + as_images(t) * noise.randn(*real.shape[1:])
        with torch.no_grad():
            x_t2 = self.teacher_heun_step(x_t, t, t2, real_labels)
        student_net = self.nets["generator"]
        target_net = student_net if self.target is None else self.target.train(student_net.training)

        def target_call():
            with torch.no_grad():
                return denoise(target_net, x_t2, t2, real_labels)

        student, target = same_dropout(x_t.device, lambda: denoise(student_net, x_t, t, real_labels), target_call)
        return self.distance(student, target), {}

    @torch.no_grad()
    def after_step(self, phase: str) -> None:
        if self.target is None:
            return
        mu = self.args["target_ema"]
        for p_t, p in zip(self.target.parameters(), self.nets["generator"].parameters()):
            p_t.lerp_(p.detach(), 1 - mu)
