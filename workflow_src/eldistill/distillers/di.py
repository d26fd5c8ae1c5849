"""Diff-Instruct (DI; anchors A.1): the generator follows the detached difference of the fake and the
teacher denoisers at x_t = x_g + sigma*eps (an integral-KL gradient); the fake score learns the generator's
distribution with EDM's loss. As in the reference (`training/di_loss.py` L44-50), both denoisers of the generator
loss run in train mode with the same dropout mask."""

from __future__ import annotations

import torch

from eldistill.distillers.base import (
    Distiller,
    Phase,
    as_images,
    denoise,
    edm_fake_score_loss,
    fresh_copy,
    lognormal_sigma,
    same_dropout,
)


class DI(Distiller):
    name = "di"
    labels_from_data = True  # `training/di_training_loop.py` L244-251
    DEFAULTS = {
        "sigma_init": 1.0,
        "p_mean": -1.2,  # both phases draw sigma ~ LN(p_mean, p_std^2)
        "p_std": 1.2,
        "loss_scale": 1.0,  # `--sgls`: fake-score loss multiplier
        "loss_scale_g": 1.0,  # `--ls`: generator loss multiplier
    }

    def __init__(self, teacher, args=None, init_generator=None, augment_p=0.0, lpips="", lpips_resize=None):
        super().__init__(teacher, args, init_generator, augment_p, lpips, lpips_resize)
        self.nets["fake_score"] = fresh_copy(teacher)

    def phases(self, images_seen: int, iteration: int) -> list[Phase]:
        return [Phase("fake", ("fake_score",)), Phase("generator", ("generator",))]

    def loss(self, phase, x_gen, labels, real, real_labels, noise, images_seen):
        a = self.args
        fake = self.nets["fake_score"]
        if phase == "fake":
            sigma_data = float(self.teacher.sigma_data)
            score = edm_fake_score_loss(fake, x_gen, labels, noise, a["p_mean"], a["p_std"], sigma_data, self.augment_p)
            return a["loss_scale"] * score, {}
        sigma = lognormal_sigma(noise, a["p_mean"], a["p_std"])
        x_t = x_gen.detach() + as_images(sigma) * noise.randn(*x_gen.shape[1:])
        modes = fake.training, self.teacher.training
        fake.train(), self.teacher.train()
        with torch.no_grad():
            d_teacher, d_fake = same_dropout(
                x_t.device, lambda: denoise(self.teacher, x_t, sigma, labels), lambda: denoise(fake, x_t, sigma, labels)
            )
        fake.train(modes[0]), self.teacher.train(modes[1])
        direction = d_fake - d_teacher
        # d loss / d x_g = D_fake - D_teacher, the KL gradient sigma^2 (s_fake - s_teacher).
        return a["loss_scale_g"] * (direction * x_gen).flatten(1).sum(1), {}
