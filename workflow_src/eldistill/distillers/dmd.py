"""DMD / DMD2 (anchors A.4, A.5): the generator follows the detached, normalised difference of the teacher
and fake denoisers (distribution matching); the fake score learns the generator's distribution on the 1000
Karras sigmas. DMD2 options: a two-time-scale update ratio and a GAN head on the fake network's bottleneck.
DMD1 option: a regression term on fixed teacher noise-image pairs (LPIPS as DMD1, or L2 offline).

GAN head: the reference stacks strided 4x4 convolutions sized for an 8x8 ImageNet-64 bottleneck; ours ends
with a spatial mean so it works on any bottleneck size (a stated deviation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eldistill.distillers.base import Distiller, Phase, as_images, denoise, edm_weight, fresh_copy, karras_grid
from eldistill.generator import one_step


def _groups(channels: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)


class GANHead(nn.Module):
    """conv 4x4/2 -> GN -> SiLU -> conv 1x1 -> GN -> SiLU -> spatial mean -> linear: one logit per image."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 4, stride=2, padding=1),
            nn.GroupNorm(_groups(channels), channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 1),
            nn.GroupNorm(_groups(channels), channels),
            nn.SiLU(),
        )
        self.out = nn.Linear(channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(features.float()).mean(dim=(2, 3))).squeeze(1)


def bottleneck_channels(net: nn.Module) -> int:
    """Channels of the net's bottleneck, read from one forward at the net's own resolution."""
    x = torch.zeros(1, net.img_channels, net.img_resolution, net.img_resolution, device=next(net.parameters()).device)
    labels = None if not net.label_dim else torch.zeros(1, net.label_dim, device=x.device)
    with torch.no_grad():
        _, feats = net(x, torch.ones(1, device=x.device), labels, return_features=True)
    return int(feats.shape[1])


class DMD(Distiller):
    name = "dmd"
    DEFAULTS = {
        "sigma_init": 80.0,  # DMD2's `conditioning_sigma`
        "num_sigmas": 1000,  # Karras grid the indices below refer to
        "min_step_percent": 0.02,  # generator indices U{20..980} of 1000
        "max_step_percent": 0.98,
        "gen_update_ratio": 5,  # DMD2's `dfake_gen_update_ratio`: generator steps every N-th iteration
        "gan": False,  # DMD2's GAN head on the fake network's bottleneck
        "gan_weight_g": 3e-3,  # `gen_cls_loss_weight`
        "gan_weight_d": 1e-2,  # `cls_loss_weight`
        "regression_weight": 0.0,  # DMD1's regression term (0 = DMD2)
        "regression_pairs": 256,  # fixed teacher noise-image pairs for it (EDM Heun, 18 steps)
        "regression_seed": 0,
        "regression_distance": "l2",  # or "lpips" (DMD1's; weights from the cell's lpips folder)
        "optimizer": "adamw",  # DMD2's AdamW (betas, weight decay and warm-up are cell settings)
        "clip_norm": 10.0,  # gradient-norm clipping on every network
    }

    def __init__(self, teacher, args=None, init_generator=None, augment_p=0.0, lpips="", lpips_resize=None):
        super().__init__(teacher, args, init_generator, augment_p, lpips, lpips_resize)
        a = self.args
        if a["regression_distance"] not in ("l2", "lpips"):
            raise ValueError(
                f"distiller_args: 'regression_distance' is {a['regression_distance']!r}; choose l2 or lpips"
            )
        if a["gen_update_ratio"] < 1:
            raise ValueError(f"distiller_args: 'gen_update_ratio' must be >= 1, got {a['gen_update_ratio']}")
        self.nets["fake_score"] = fresh_copy(teacher)
        self.sigmas = karras_grid(a["num_sigmas"]).flip(0).float()  # index 0 = sigma_min, as in DMD2
        if a["gan"]:
            self.nets["gan_head"] = GANHead(bottleneck_channels(teacher)).train().requires_grad_(False)
        self.ref_noise = self.ref_images = None
        if a["regression_weight"] > 0:
            self.ref_noise, self.ref_images = self.teacher_pairs(a["regression_pairs"], a["regression_seed"])

    def teacher_pairs(self, n: int, seed: int):
        from eldistill.nets.sampler import heun_sample

        t = self.teacher
        if t.label_dim:
            raise ValueError("distiller_args: 'regression_weight' > 0 is only supported for unconditional teachers")
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(n, t.img_channels, t.img_resolution, t.img_resolution, generator=gen)
        with torch.no_grad():
            images = heun_sample(t, noise.to(next(t.parameters()).device)).float().cpu()
        return noise, images

    def phases(self, images_seen: int, iteration: int) -> list[Phase]:
        a = self.args
        fake_nets = ("fake_score", "gan_head") if a["gan"] else ("fake_score",)
        phases = [Phase("fake", fake_nets, needs_real=a["gan"], clip_norm=a["clip_norm"])]
        if iteration % a["gen_update_ratio"] == 0:
            phases.append(Phase("generator", ("generator",), clip_norm=a["clip_norm"]))
        return phases

    def _sigma(self, noise, low: int, high: int) -> torch.Tensor:
        index = noise.randint(low, high)
        return self.sigmas.to(index.device)[index]

    def _gan_logits(self, x, sigma, labels, noise):
        """Diffusion-GAN: noise x at sigma, logits of the head on the fake network's bottleneck."""
        x_t = x + as_images(sigma) * noise.randn(*x.shape[1:])
        _, feats = denoise(self.nets["fake_score"], x_t, sigma, labels, features=True)
        return self.nets["gan_head"](feats)

    def loss(self, phase, x_gen, labels, real, real_labels, noise, images_seen):
        a = self.args
        n_sig = a["num_sigmas"]
        if phase == "fake":
            x = x_gen.detach()
            sigma = self._sigma(noise, 0, n_sig)
            x_t = x + as_images(sigma) * noise.randn(*x.shape[1:])
            d = denoise(self.nets["fake_score"], x_t, sigma, labels)
            score = as_images(edm_weight(sigma, float(self.teacher.sigma_data))) * (d - x) ** 2
            score = score.flatten(1).mean(1)
            if not a["gan"]:
                return score, {}
            # real and fake each get their own noise level, as `compute_cls_logits` draws one per call
            disc = F.softplus(self._gan_logits(x, self._sigma(noise, 0, n_sig), labels, noise))
            disc = disc + F.softplus(-self._gan_logits(real, self._sigma(noise, 0, n_sig), real_labels, noise))
            return score + a["gan_weight_d"] * disc, {"score": score, "disc": disc}
        dm = self.distribution_matching_loss(x_gen, labels, noise)
        total, logs = dm, {"dm": dm}
        if a["gan"]:
            sigma_gan = self._sigma(noise, 0, n_sig)
            adv = F.softplus(-self._gan_logits(x_gen, sigma_gan, labels, noise))
            total, logs["adv"] = total + a["gan_weight_g"] * adv, adv
        if a["regression_weight"] > 0:
            reg = self.regression_loss(noise, x_gen.device)
            total, logs["regression"] = total + a["regression_weight"] * reg, reg
        return total, logs

    def distribution_matching_loss(self, x_gen, labels, noise) -> torch.Tensor:
        """1/2 mean_pixels (x_g - sg(x_g - g))^2 with g = (D_fake - D_teacher) / mean|x_g - D_teacher|, so
        d loss / d x_g = g / (C*H*W) per sample, detached from both denoisers."""
        a = self.args
        n_sig = a["num_sigmas"]
        # indices min_step..max_step inclusive, as DMD2 draws them (`edm_guidance.py` L82-86): 20..980 of 1000
        high = min(int(a["max_step_percent"] * n_sig) + 1, n_sig)
        sigma = self._sigma(noise, int(a["min_step_percent"] * n_sig), high)
        x = x_gen.detach()
        with torch.no_grad():
            x_t = x + as_images(sigma) * noise.randn(*x.shape[1:])
            d_real = denoise(self.teacher, x_t, sigma, labels)
            d_fake = denoise(self.nets["fake_score"], x_t, sigma, labels)
            norm = (x - d_real).abs().flatten(1).mean(1)
            grad = torch.nan_to_num((d_fake - d_real) / as_images(norm))
        return 0.5 * ((x_gen - (x - grad)) ** 2).flatten(1).mean(1)

    def regression_loss(self, noise, device) -> torch.Tensor:
        """DMD1: the distance (LPIPS in the paper, or mean squared) between G(z_ref) and the teacher's ODE image
        for z_ref, per sample."""
        idx = noise.randint(0, self.ref_noise.shape[0]).cpu()
        z, y = self.ref_noise[idx].to(device), self.ref_images[idx].to(device)
        x = one_step(self.nets["generator"], z, self.sigma_init)
        if self.args["regression_distance"] == "lpips":
            return self.lpips(x, y)
        return ((x - y) ** 2).flatten(1).mean(1)
