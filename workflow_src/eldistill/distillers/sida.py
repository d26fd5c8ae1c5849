"""SiDA (anchors A.3): SiD with an adversarial term whose discriminator is the fake-score network's encoder
(logits = channel mean of its bottleneck). SiD2A is SiDA started from a SiD generator (cell.init_generator).

Batch-mean BCE, as the reference (`sida_training/sida_loss.py` L70-72, L118-123): the BCE is averaged over the
batch one process computes at a time and then weighted per sample, by lambda(sigma_i) for the discriminator and
by 1 / mean|x_g,i - D_teacher| for the generator. Here that batch is the accumulation round (the reference's
per-GPU batch), so these two terms, like EL, depend on batch_gpu and are not split-invariant. The real images go
through the discriminator with the labels of the generated batch, which the loop draws from the real batch
itself (labels_from_data), as the reference does (`sida_training/sida_training_loop.py` L348-363)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eldistill.distillers.base import (
    Phase,
    as_images,
    denoise,
    edm_weight,
    lognormal_sigma,
    logvar_weighted,
    maybe_augment,
)
from eldistill.distillers.sid import SiD


def encoder_logits(features: torch.Tensor) -> torch.Tensor:
    """The discriminator's logits: channel mean of the bottleneck, (n, 1, h, w)."""
    return features.float().mean(dim=1, keepdim=True)


def batch_bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """nn.BCEWithLogitsLoss(): the mean over every logit of the batch (a scalar)."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


class SiDA(SiD):
    name = "sida"
    DEFAULTS = {
        **SiD.DEFAULTS,
        "alpha": 1.0,
        "loss_scale_d": 1.0,  # `--lsd`: discriminator loss multiplier
        "loss_scale_g_gan": 0.01,  # `--lsg_gan`: generator adversarial loss multiplier
        "gan_start_images": 200_000,  # the generator's adversarial term starts after this many images
        "generator_freeze_images": 100_000,  # the generator optimizer does not step before this
        "clip_value": 1.0,  # gradient value clipping on the fake score / discriminator
    }
    # null: no clipping, as SiDA's EDM2 loop (clipping commented out; config/paper.yaml recipes.imagenet512)
    NULLABLE = ("clip_value",)

    def phases(self, images_seen: int, iteration: int) -> list[Phase]:
        a = self.args
        return [
            Phase("fake", ("fake_score",), needs_real=True, clip_value=a["clip_value"]),
            Phase("generator", ("generator",), step=images_seen >= a["generator_freeze_images"]),
        ]

    def loss(self, phase, x_gen, labels, real, real_labels, noise, images_seen):
        a = self.args
        if phase == "fake":
            return self.fake_and_discriminator_loss(x_gen, labels, real, real_labels, noise)
        sid, (feats, norm, ok, inv_var) = self.sid_generator_loss(x_gen, labels, noise, features=True)
        # The reference tests `cur_nimg > 200*1000` (and `> 100*1000` above): the same iterations as `>=` for any
        # batch that does not divide the threshold, i.e. every paper batch; `>=` lets 0 mean "from the start".
        if images_seen < a["gan_start_images"]:
            return a["loss_scale_g"] * sid, {"sid": sid}
        chw = x_gen[0].numel()
        bce = batch_bce(encoder_logits(feats[ok]).clamp(-10, 10), 1.0)  # over the finite samples
        # inv_var: 1, or 1/e^u with return_logvar (EDM2; sida_loss_edm2.py L283-284)
        adv = torch.where(ok, bce / norm * chw * inv_var, torch.zeros_like(norm))
        total = 0.5 * (a["loss_scale_g"] * sid + a["loss_scale_g_gan"] * adv)
        return total, {"sid": sid, "adv": adv}

    def fake_and_discriminator_loss(self, x_gen, labels, real, real_labels, noise):
        """Denoising loss on generated images plus the discriminator's BCE, real and fake noised with the
        same sigma and the same noise. With return_logvar (EDM2) the fake score's log-variance u(sigma) weights
        both: lambda/e^u ||D - x||^2 + u per pixel and lambda/e^u BCE (SiDA sida_loss_edm2.py L326-342)."""
        a = self.args
        fake = self.nets["fake_score"]
        x = x_gen.detach()
        sigma = lognormal_sigma(noise, a["p_mean"], a["p_std"])
        weight = edm_weight(sigma, float(self.teacher.sigma_data))
        # generated and real images each get their own augmentation draw (`sida_loss.py` L85, L94)
        x, aug_fake = maybe_augment(x, noise, self.augment_p)
        n = as_images(sigma) * noise.randn(*x.shape[1:])
        real, aug_real = maybe_augment(real, noise, self.augment_p)
        fake_out = denoise(
            fake, x + n, sigma, labels, features=True, augment_labels=aug_fake, logvar=a["return_logvar"]
        )
        d_fake, feats_fake = fake_out[0], fake_out[1]
        # the real images go through with the generated batch's labels
        _, feats_real = denoise(fake, real + n, sigma, labels, features=True, augment_labels=aug_real)
        error = weight * ((d_fake - x) ** 2).flatten(1).sum(1)
        bce = batch_bce(encoder_logits(feats_real), 1.0) + batch_bce(encoder_logits(feats_fake), 0.0)
        disc = weight * 0.5 * bce
        if a["return_logvar"]:
            u = fake_out[2]
            score, disc = logvar_weighted(error, u, x[0].numel()), disc / u.exp()
        else:
            score = error
        return a["loss_scale"] * score + a["loss_scale_d"] * disc, {"score": score, "disc": disc}


class SiD2A(SiDA):
    """SiDA started from a SiD generator; the loop passes cell.init_generator as `init_generator`."""

    name = "sid2a"
