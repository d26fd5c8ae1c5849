"""EDM2's log-variance (uncertainty) weighting in SiD and SiDA (`return_logvar`, SiDA sida_loss_edm2.py) against
hand computations in float64 on a stand-in denoiser whose log-variance is u(sigma) = a ln(sigma) + c."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from eldistill.distillers import build_distiller
from eldistill.distillers.base import SampleNoise


class LogvarDenoiser(nn.Module):
    """D(x; sigma) = c_skip x + c_out tanh(w c_in x + b); features tanh(x); logvar u(sigma) = a ln(sigma) + c."""

    def __init__(self, w: float, a: float, c: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))
        self.logvar_linear = nn.Parameter(torch.tensor([a, c], dtype=torch.float64))  # the EDM2 attribute name
        self.sigma_data, self.img_channels, self.img_resolution, self.label_dim = 0.5, 1, 2, 0

    def forward(self, x, sigma, class_labels=None, return_features=False, return_logvar=False):
        s = sigma.reshape(-1, 1, 1, 1).to(torch.float64)
        sd = self.sigma_data
        d = sd**2 / (s**2 + sd**2) * x + s * sd / (s**2 + sd**2).sqrt() * torch.tanh(self.w * x / (s**2 + sd**2).sqrt())
        out = [d]
        if return_features:
            out.append(torch.tanh(x))
        if return_logvar:
            out.append((self.logvar_linear[0] * s.log() + self.logvar_linear[1]).reshape(-1, 1, 1, 1))
        return tuple(out) if len(out) > 1 else d

    def numpy(self, x, s):
        sd, w = self.sigma_data, self.w.item()
        return sd**2 / (s**2 + sd**2) * x + s * sd / np.sqrt(s**2 + sd**2) * np.tanh(w * x / np.sqrt(s**2 + sd**2))

    def u(self, s):
        a, c = self.logvar_linear.tolist()
        return a * math.log(s) + c


class FixedNoise(SampleNoise):
    def __init__(self, *draws):
        self.draws = list(draws)

    def randn(self, *shape):
        return self.draws.pop(0)

    def rand(self, *shape):
        return self.draws.pop(0)


X = torch.tensor([[[[0.3, -0.7], [1.1, 0.2]]], [[[-0.4, 0.9], [0.05, -1.3]]]], dtype=torch.float64)
REAL = torch.tensor([[[[-0.2, 0.4], [0.6, -0.9]]], [[[0.7, 0.1], [-0.5, 0.3]]]], dtype=torch.float64)
EPS = torch.tensor([[[[0.5, -1.0], [0.2, 1.5]]], [[[-0.3, 0.8], [-1.2, 0.4]]]], dtype=torch.float64)
LN = torch.tensor([0.2, -1.0], dtype=torch.float64)


def build(name, args=None):
    teacher = LogvarDenoiser(1.3, 0.0, 0.0)  # the teacher's u is 0: a loss that read it would not be weighted
    d = build_distiller(name, teacher, {"return_logvar": True, "p_mean": -0.4, "p_std": 1.0, **(args or {})})
    with torch.no_grad():
        d.nets["fake_score"].w.fill_(0.7)
        d.nets["fake_score"].logvar_linear.copy_(torch.tensor([0.3, -0.5]))
    return d, teacher


def lam(s):
    return (s**2 + 0.25) / (s * 0.5) ** 2


def test_fake_score_loss_is_uncertainty_weighted():
    d, _ = build("sid")
    loss, _ = d.loss("fake", X, None, None, None, FixedNoise(LN, EPS), 0)
    fake = d.nets["fake_score"]
    for i in range(2):
        s = math.exp(1.0 * LN[i].item() - 0.4)  # EDM2's LN(-0.4, 1.0)
        y = fake.numpy(X[i].numpy() + s * EPS[i].numpy(), s)
        u = fake.u(s)
        expected = lam(s) / math.exp(u) * np.sum((y - X[i].numpy()) ** 2) + u * 4  # + u for each of 4 pixels
        assert loss[i].item() == pytest.approx(expected, rel=1e-12)


def test_sid_generator_loss_divided_by_the_fake_scores_variance():
    d, teacher = build("sid", {"alpha": 1.0})
    t = torch.tensor([0.25, 0.5], dtype=torch.float64)
    loss, _ = d.loss("generator", X, None, None, None, FixedNoise(t, EPS), 0)
    fake = d.nets["fake_score"]
    for i in range(2):
        k = 1 - t[i].item() * 0.8
        s = (80 ** (1 / 7) + k * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
        xt = X[i].numpy() + s * EPS[i].numpy()
        f_real, f_fake = teacher.numpy(xt, s), fake.numpy(xt, s)
        diff = f_real - f_fake
        sid = np.sum(diff * ((f_real - X[i].numpy()) - diff)) / np.abs(X[i].numpy() - f_real).mean()
        assert loss[i].item() == pytest.approx(100 * sid / math.exp(fake.u(s)), rel=1e-12)


def test_sida_fake_and_discriminator_losses_are_uncertainty_weighted():
    d, _ = build("sida", {"loss_scale_d": 100.0})
    loss, terms = d.loss("fake", X, None, REAL, None, FixedNoise(LN, EPS), 0)
    fake = d.nets["fake_score"]

    def bce(logits, target):  # mean over pixels of BCE with logits
        p = 1 / (1 + np.exp(-logits))
        return -np.mean(target * np.log(p) + (1 - target) * np.log(1 - p))

    sigmas = [math.exp(LN[i].item() - 0.4) for i in range(2)]
    noised = [(X[i].numpy() + s * EPS[i].numpy(), REAL[i].numpy() + s * EPS[i].numpy()) for i, s in enumerate(sigmas)]
    # the reference's BCE is the mean over the whole batch's logits (tanh of the 1-channel input: its mean)
    batch = bce(np.tanh([r for _, r in noised]), 1.0) + bce(np.tanh([f for f, _ in noised]), 0.0)
    for i, s in enumerate(sigmas):
        u = fake.u(s)
        score = lam(s) / math.exp(u) * np.sum((fake.numpy(noised[i][0], s) - X[i].numpy()) ** 2) + 4 * u
        disc = lam(s) * 0.5 * batch / math.exp(u)
        assert terms["score"][i].item() == pytest.approx(score, rel=1e-12)
        # the discriminator's logits are float32 (sida.encoder_logits), hence rel 1e-6
        assert terms["disc"][i].item() == pytest.approx(disc, rel=1e-6)
        assert loss[i].item() == pytest.approx(score + 100 * disc, rel=1e-6)


def test_sida_generator_gan_term_divided_by_the_variance():
    d, _ = build("sida", {"gan_start_images": 0})
    t = torch.tensor([0.25, 0.5], dtype=torch.float64)
    _, on = d.loss("generator", X, None, None, None, FixedNoise(t, EPS), 0)
    d.args["return_logvar"] = False
    _, off = d.loss("generator", X, None, None, None, FixedNoise(t, EPS), 0)
    fake = d.nets["fake_score"]
    for i in range(2):
        k = 1 - t[i].item() * 0.8
        s = (80 ** (1 / 7) + k * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
        scale = math.exp(-fake.u(s))
        assert on["adv"][i].item() == pytest.approx(off["adv"][i].item() * scale, rel=1e-12)
        assert on["sid"][i].item() == pytest.approx(off["sid"][i].item() * scale, rel=1e-12)


def test_return_logvar_needs_an_edm2_teacher():
    class NoLogvar(nn.Module):
        sigma_data = 0.5

        def forward(self, x, sigma, class_labels=None):
            return x

    with pytest.raises(ValueError, match="'return_logvar' needs an EDM2 teacher"):
        build_distiller("sid", NoLogvar(), {"return_logvar": True})
