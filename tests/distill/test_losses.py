"""SiD's, DMD's and DI's generator losses against hand computations in float64 on a fixed small input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from eldistill.distillers import build_distiller
from eldistill.distillers.base import SampleNoise, edm_weight, karras_grid
from eldistill.train import ema_beta


class Denoiser(nn.Module):
    """A float64 stand-in with the EDM call signature: D(x; sigma) = c_skip x + c_out tanh(w c_in x + b)."""

    def __init__(self, w: float, b: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(b, dtype=torch.float64))
        self.sigma_data, self.img_channels, self.img_resolution, self.label_dim = 0.5, 1, 2, 0

    def forward(self, x, sigma, class_labels=None, return_features=False):
        s = sigma.reshape(-1, 1, 1, 1).to(torch.float64)
        sd = self.sigma_data
        c_skip, c_out, c_in = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt(), 1 / (s**2 + sd**2).sqrt()
        return c_skip * x + c_out * torch.tanh(self.w * c_in * x + self.b)

    def numpy(self, x, s):
        """The same function in numpy, for the hand computations."""
        sd = self.sigma_data
        w, b = self.w.item(), self.b.item()
        return sd**2 / (s**2 + sd**2) * x + s * sd / np.sqrt(s**2 + sd**2) * np.tanh(w * x / np.sqrt(s**2 + sd**2) + b)

    def numpy_slope(self, x, s):
        """dD/dx, pixel by pixel (the stand-in acts on each pixel alone)."""
        sd = self.sigma_data
        w, b, c_in = self.w.item(), self.b.item(), 1 / np.sqrt(s**2 + sd**2)
        return sd**2 / (s**2 + sd**2) + s * sd * c_in * (1 - np.tanh(w * c_in * x + b) ** 2) * w * c_in


class FixedNoise(SampleNoise):
    """Hands out given tensors in call order."""

    def __init__(self, *draws):
        self.draws = list(draws)

    def _next(self):
        return self.draws.pop(0)

    def randn(self, *shape):
        return self._next()

    def rand(self, *shape):
        return self._next()

    def randint(self, low, high, *shape):
        return self._next()


def build(name, teacher_w, fake_w, args=None):
    teacher = Denoiser(teacher_w, 0.1)
    d = build_distiller(name, teacher, args)
    with torch.no_grad():
        d.nets["fake_score"].w.fill_(fake_w)
    return d, teacher


X = torch.tensor([[[[0.3, -0.7], [1.1, 0.2]]], [[[-0.4, 0.9], [0.05, -1.3]]]], dtype=torch.float64)
EPS = torch.tensor([[[[0.5, -1.0], [0.2, 1.5]]], [[[-0.3, 0.8], [-1.2, 0.4]]]], dtype=torch.float64)


def test_sid_generator_loss_matches_hand_computation():
    d, teacher = build("sid", 1.3, 0.7)
    u = torch.tensor([0.25, 0.5], dtype=torch.float64)  # rand() -> Karras time 1 - 0.8 u
    x = X.clone().requires_grad_(True)
    loss, _ = d.loss("generator", x, None, None, None, FixedNoise(u, EPS), 0)
    xs, eps, alpha = X.numpy(), EPS.numpy(), 1.2
    expected, grads = [], []
    for i in range(2):
        t = 1 - u[i].item() * 0.8
        sigma = (80 ** (1 / 7) + t * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
        xt = xs[i] + sigma * eps[i]
        f_real, f_fake = teacher.numpy(xt, sigma), d.nets["fake_score"].numpy(xt, sigma)
        norm = np.abs(xs[i] - f_real).mean()
        diff = f_real - f_fake
        expected.append(100 * np.sum(diff * ((f_real - xs[i]) - alpha * diff)) / norm)
        # The gradient reaches x_g directly and, via x_t = x_g + sigma eps, through both denoisers; the
        # normaliser is a constant (stop-gradient, as in SiD's reference).
        s_real, s_fake = teacher.numpy_slope(xt, sigma), d.nets["fake_score"].numpy_slope(xt, sigma)
        d_diff = s_real - s_fake
        grads.append(100 * (d_diff * ((f_real - xs[i]) - alpha * diff) + diff * ((s_real - 1) - alpha * d_diff)) / norm)
    np.testing.assert_allclose(loss.detach().numpy(), expected, rtol=1e-12)
    loss.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.stack(grads), rtol=1e-10)


def test_sid_drops_a_sample_with_a_nan():
    d, _ = build("sid", 1.3, 0.7)
    x = X.clone()
    x[1, 0, 0, 0] = float("nan")
    loss, _ = d.loss("generator", x, None, None, None, FixedNoise(torch.tensor([0.25, 0.5]).double(), EPS), 0)
    assert torch.isfinite(loss[0]) and loss[0] != 0 and loss[1] == 0


def test_dmd_generator_loss_and_gradient_match_hand_computation():
    d, teacher = build("dmd", 1.3, 0.7)
    index = torch.tensor([100, 700])
    x = X.clone().requires_grad_(True)
    loss, _ = d.loss("generator", x, None, None, None, FixedNoise(index, EPS), 0)
    grid = karras_grid(1000).flip(0).numpy()  # ascending, as DMD2 indexes it
    xs, eps = X.numpy(), EPS.numpy()
    expected, grads = [], []
    for i in range(2):
        sigma = float(np.float32(grid[index[i]]))  # the distiller keeps its sigma table in float32
        xt = xs[i] + sigma * eps[i]
        d_real, d_fake = teacher.numpy(xt, sigma), d.nets["fake_score"].numpy(xt, sigma)
        g = (d_fake - d_real) / np.abs(xs[i] - d_real).mean()
        expected.append(0.5 * np.mean(g**2))  # x - sg(x - g) = g
        grads.append(g / g.size)
    np.testing.assert_allclose(loss.detach().numpy(), expected, rtol=1e-12)
    loss.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.stack(grads), rtol=1e-12)


def test_di_generator_gradient_is_the_detached_denoiser_difference():
    d, teacher = build("di", 1.3, 0.7)
    ln_sigma = torch.tensor([0.2, -1.0], dtype=torch.float64)  # randn() -> sigma = exp(1.2 z - 1.2)
    x = X.clone().requires_grad_(True)
    loss, _ = d.loss("generator", x, None, None, None, FixedNoise(ln_sigma, EPS), 0)
    loss.sum().backward()
    for i in range(2):
        sigma = math.exp(1.2 * ln_sigma[i].item() - 1.2)
        xt = X[i].numpy() + sigma * EPS[i].numpy()
        expected = d.nets["fake_score"].numpy(xt, sigma) - teacher.numpy(xt, sigma)
        np.testing.assert_allclose(x.grad[i].numpy(), expected, rtol=1e-12)


def test_edm_fake_score_loss_matches_hand_computation():
    d, _ = build("sid", 1.3, 0.7)
    ln_sigma = torch.tensor([0.2, -1.0], dtype=torch.float64)
    loss, _ = d.loss("fake", X, None, None, None, FixedNoise(ln_sigma, EPS), 0)
    for i in range(2):
        sigma = math.exp(1.2 * ln_sigma[i].item() - 1.2)
        y = d.nets["fake_score"].numpy(X[i].numpy() + sigma * EPS[i].numpy(), sigma)
        lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
        assert loss[i].item() == pytest.approx(lam * np.sum((y - X[i].numpy()) ** 2), rel=1e-12)
    assert edm_weight(torch.tensor(2.0), 0.5).item() == pytest.approx(1 / 4 + 4)


def test_cm_pseudo_huber_distance_closed_form():
    d = build_distiller("cm", Denoiser(1.0, 0.0), {"distance": "pseudo_huber"})
    a, b = X, X + 0.1
    c = 0.00054 * math.sqrt(4)
    expected = math.sqrt(4 * 0.01 + c**2) - c
    assert d.distance(a, b).tolist() == pytest.approx([expected, expected], rel=1e-9)


def test_ema_beta_follows_edm():
    assert ema_beta(0, 256, 500_000) == 0.0  # the first update copies the generator
    assert ema_beta(10_000, 256, 500_000) == pytest.approx(0.5 ** (256 / 500))  # ramp: 5 % of images seen
    assert ema_beta(10**9, 256, 500_000) == pytest.approx(0.5 ** (256 / 500_000))


def test_unknown_distiller_arg_is_named():
    with pytest.raises(ValueError, match="alphaa"):
        build_distiller("sid", Denoiser(1.0, 0.0), {"alphaa": 1.0})
    with pytest.raises(ValueError, match="distance"):
        build_distiller("cm", Denoiser(1.0, 0.0), {"distance": "lpips"})
