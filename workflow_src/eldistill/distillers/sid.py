"""Score identity Distillation (SiD; anchors A.2): the fake score learns the generator's distribution with
EDM's loss, and the generator loss reads both denoisers at x_t = x_g + sigma*eps with gradients flowing
through x_g and, via x_t, through both (frozen-parameter) denoisers."""

from __future__ import annotations

import torch

from eldistill.distillers.base import (
    Distiller,
    Phase,
    SampleNoise,
    as_images,
    denoise,
    edm_fake_score_loss,
    finite_rows,
    fresh_copy,
    has_logvar,
    karras_sigma,
)


class SiD(Distiller):
    name = "sid"
    labels_from_data = True  # `training/sid_training_loop.py` L298-303, L324-329
    DEFAULTS = {
        "alpha": 1.2,  # the "L2 - alpha * L1" weight; 1.0 for AFHQ and inside SiDA
        "t_max": 800,  # generator sigmas: Karras time u ~ U(0, t_max/1000)
        "sigma_init": 2.5,
        "p_mean": -1.2,  # fake-score sigma ~ LN(p_mean, p_std^2)
        "p_std": 1.2,
        "loss_scale": 1.0,  # `--ls`: fake-score loss multiplier
        "loss_scale_g": 100.0,  # `--lsg`: generator loss multiplier
        # EDM2 teachers (`--return_logvar`): weight the losses by the fake score's learned log-variance u(sigma),
        # fake score lambda/e^u ||D - x||^2 + u, generator (and SiDA's GAN terms) / e^u (SiDA sida_loss_edm2.py)
        "return_logvar": False,
    }

    def __init__(self, teacher, args=None, init_generator=None, augment_p=0.0, lpips="", lpips_resize=None):
        super().__init__(teacher, args, init_generator, augment_p, lpips, lpips_resize)
        self.nets["fake_score"] = fresh_copy(teacher)
        if self.args["return_logvar"] and not has_logvar(teacher):
            raise ValueError(
                f"distiller_args: 'return_logvar' needs an EDM2 teacher (a learned log-variance); "
                f"{type(teacher).__name__} has none"
            )

    def phases(self, images_seen: int, iteration: int) -> list[Phase]:
        return [Phase("fake", ("fake_score",)), Phase("generator", ("generator",))]

    def loss(self, phase, x_gen, labels, real, real_labels, noise, images_seen):
        if phase == "fake":
            return self.fake_loss(x_gen, labels, noise), {}
        per_sample, _ = self.sid_generator_loss(x_gen, labels, noise)
        return self.args["loss_scale_g"] * per_sample, {}

    def fake_loss(self, x_gen, labels, noise: SampleNoise) -> torch.Tensor:
        a = self.args
        sigma_data = float(self.teacher.sigma_data)
        fake = self.nets["fake_score"]
        loss = edm_fake_score_loss(
            fake, x_gen, labels, noise, a["p_mean"], a["p_std"], sigma_data, self.augment_p, a["return_logvar"]
        )
        return a["loss_scale"] * loss

    def generator_sigma(self, noise: SampleNoise) -> torch.Tensor:
        """sigma at Karras time 1 - u, u ~ U(0, t_max/1000): the lower part of the noise range."""
        u = noise.rand() * (self.args["t_max"] / 1000)
        return karras_sigma(1 - u)

    def sid_generator_loss(self, x_gen, labels, noise: SampleNoise, alpha: float | None = None, features=False):
        """SiD's per-sample generator loss (n,) before the loss scale; with features=True also the fake
        network's bottleneck at x_t (SiDA's discriminator input), the per-sample normaliser, which samples are
        finite and the per-sample weight 1/e^u (1 without return_logvar) that SiDA's GAN term shares."""
        alpha = self.args["alpha"] if alpha is None else alpha
        sigma = self.generator_sigma(noise)
        x_t = x_gen + as_images(sigma) * noise.randn(*x_gen.shape[1:])
        y_real = denoise(self.teacher, x_t, sigma, labels)
        logvar = self.args["return_logvar"]
        fake_out = denoise(self.nets["fake_score"], x_t, sigma, labels, features=features, logvar=logvar)
        fake_out = fake_out if isinstance(fake_out, tuple) else (fake_out,)
        y_fake, feats = fake_out[0], (fake_out[1] if features else None)
        # u from the fake score, as SiDA's EDM2 loss (sida_loss_edm2.py L429: it replaces the teacher's)
        inv_var = (-fake_out[-1]).exp() if logvar else torch.ones_like(sigma)
        # A sample with a non-finite value anywhere is dropped from the loss (the reference masks them too).
        ok = finite_rows(x_gen, y_real, y_fake, inv_var[:, None])
        keep = as_images(ok)
        x_gen, y_real, y_fake = (torch.where(keep, t, torch.zeros_like(t)) for t in (x_gen, y_real, y_fake))
        norm = (x_gen - y_real).abs().flatten(1).mean(1).clamp(min=1e-5).detach()
        diff = y_real - y_fake
        per_pixel = diff * ((y_real - x_gen) - alpha * diff)
        inv_var = torch.where(ok, inv_var, torch.zeros_like(inv_var))
        per_sample = torch.where(ok, per_pixel.flatten(1).sum(1) / norm * inv_var, torch.zeros_like(norm))
        if features:
            return per_sample, (feats, norm, ok, inv_var)
        return per_sample, None
