"""The distillers' losses against hand computations in float64 on a fixed small input, including where they
follow their reference code to the letter: SiDA's batch-mean BCE weighting and the labels of its real images,
DI's shared dropout mask, CM's online target and x-flip, DMD2's index range and independent GAN noise levels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
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
        build_distiller("cm", Denoiser(1.0, 0.0), {"distance": "dists"})  # lpips is valid since it landed


def test_sida_clip_value_null_means_no_clipping():
    """config/paper.yaml's ImageNet 512 recipe sets clip_value: null (SiDA's EDM2 loop does not clip); the
    rehearsal found every such cell refused at its start."""
    for name in ("sida", "sid2a"):
        d = build_distiller(name, Denoiser(1.0, 0.0), {"clip_value": None})
        assert {p.clip_value for p in d.phases(10**9, 0)} == {None}
    with pytest.raises(ValueError, match="'alpha' of distiller 'sida' must be a finite number"):
        build_distiller("sida", Denoiser(1.0, 0.0), {"alpha": None})  # null stays refused elsewhere


# --- reference details ----------------------------------------------------------------------------------------
class FeatureDenoiser(Denoiser):
    """The stand-in denoiser plus a 'bottleneck' tanh(w c_in x + b) of shape (n, 1, 2, 2), recording the labels
    of every call."""

    def __init__(self, w, b):
        super().__init__(w, b)
        self.seen_labels = []

    def forward(self, x, sigma, class_labels=None, return_features=False):
        self.seen_labels.append(class_labels)
        d = super().forward(x, sigma, class_labels)
        if not return_features:
            return d
        s = sigma.reshape(-1, 1, 1, 1).to(torch.float64)
        return d, torch.tanh(self.w * x / (s**2 + 0.25).sqrt() + self.b)

    def feats(self, x, s):
        return np.tanh(self.w.item() * x / np.sqrt(s**2 + 0.25) + self.b.item())


def bce(logits, target):
    return np.mean(np.logaddexp(0, logits) - target * logits)  # BCEWithLogits, mean over all logits


def sida(fake_w=0.7):
    teacher = FeatureDenoiser(1.3, 0.1)
    d = build_distiller("sida", teacher, {"gan_start_images": 0, "generator_freeze_images": 0})
    with torch.no_grad():
        d.nets["fake_score"].w.fill_(fake_w)
    return d, teacher


def test_sida_discriminator_weights_the_batch_mean_bce_per_sample():
    d, _ = sida()
    fake = d.nets["fake_score"]
    real = X.flip(3) * 0.5
    ln_sigma = torch.tensor([0.3, -0.8], dtype=torch.float64)
    labels, real_labels = torch.eye(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64).flip(0)
    loss, terms = d.loss("fake", X, labels, real, real_labels, FixedNoise(ln_sigma, EPS), 0)
    sigma = np.exp(1.2 * ln_sigma.numpy() - 1.2)
    lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    xs, rs, eps = X.numpy(), real.numpy(), EPS.numpy()
    logit_fake = np.stack([fake.feats(xs[i] + sigma[i] * eps[i], sigma[i]) for i in range(2)])
    logit_real = np.stack([fake.feats(rs[i] + sigma[i] * eps[i], sigma[i]) for i in range(2)])
    batch_bce = bce(logit_real, 1.0) + bce(logit_fake, 0.0)  # one number for the whole batch
    # the logits are taken in float32 (encoder_logits), hence the tolerance
    np.testing.assert_allclose(terms["disc"].numpy(), lam * 0.5 * batch_bce, rtol=1e-6)
    score = [lam[i] * np.sum((fake.numpy(xs[i] + sigma[i] * eps[i], sigma[i]) - xs[i]) ** 2) for i in range(2)]
    np.testing.assert_allclose(loss.detach().numpy(), np.array(score) + lam * 0.5 * batch_bce, rtol=1e-6)
    # the real images go through the discriminator with the generated batch's labels, as the reference passes them
    assert all(torch.equal(seen, labels) for seen in fake.seen_labels)


def test_sida_generator_adversarial_term_is_the_batch_mean_bce_over_each_samples_normaliser():
    d, teacher = sida()
    fake = d.nets["fake_score"]
    u = torch.tensor([0.25, 0.5], dtype=torch.float64)
    loss, terms = d.loss("generator", X, None, None, None, FixedNoise(u, EPS), 10**6)
    xs, eps = X.numpy(), EPS.numpy()
    logits, norms = [], []
    for i in range(2):
        t = 1 - u[i].item() * 0.8
        sigma = (80 ** (1 / 7) + t * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
        xt = xs[i] + sigma * eps[i]
        logits.append(np.clip(fake.feats(xt, sigma), -10, 10))
        norms.append(np.abs(xs[i] - teacher.numpy(xt, sigma)).mean())
    adv = bce(np.stack(logits), 1.0) / np.array(norms) * X[0].numel()
    np.testing.assert_allclose(terms["adv"].numpy(), adv, rtol=1e-6)  # float32 logits
    np.testing.assert_allclose(loss.detach().numpy(), 0.5 * (100 * terms["sid"].numpy() + 0.01 * adv), rtol=1e-6)


def tiny_dropout_net(tiny_net, p=0.5):
    net = tiny_net()
    for m in net.modules():
        if m is not net and isinstance(getattr(m, "dropout", None), float):
            m.dropout = p
    return net


class TorchNoise(FixedNoise):
    """randn() -> a fixed normal draw of the given shape."""

    def randn(self, *shape):
        return torch.randn(2, *shape, generator=torch.Generator().manual_seed(len(shape)))


def test_di_teacher_and_fake_score_share_one_dropout_mask_in_train_mode(net_factory):
    teacher = tiny_dropout_net(net_factory)
    d = build_distiller("di", teacher)  # the fake score starts as an exact copy of the teacher
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    modes = teacher.training, d.nets["fake_score"].training
    loss, _ = d.loss("generator", x, None, None, None, TorchNoise(), 0)
    loss.sum().backward()
    # equal networks under equal masks: D_fake - D_teacher = 0 exactly, so the generator gets no gradient
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert (teacher.training, d.nets["fake_score"].training) == modes  # the modes are restored
    # while two train-mode calls with their own masks differ (dropout is really on)
    teacher.train()
    s = torch.full((2,), 1.0)
    assert not torch.equal(teacher(x.detach(), s), teacher(x.detach(), s))


def test_cm_target_is_the_online_network_under_stop_gradient():
    teacher = Denoiser(1.3, 0.1)
    d = build_distiller("cm", teacher, {"target_ema": 0.0, "distance": "l2"})
    assert d.extra_modules == {}  # no separate target copy
    g = d.nets["generator"]
    with torch.no_grad():
        g.w.fill_(0.4)
    g.requires_grad_(True)
    real = X.clone()
    flip = torch.tensor([0.2, 0.9], dtype=torch.float64)  # rand() < 0.5 flips sample 0 only
    index = torch.tensor([3, 10])
    loss, _ = d.loss("generator", None, None, real, None, FixedNoise(flip, index, EPS), 0)
    sig = karras_grid(18).float().double().numpy()  # the distiller keeps its grid in float32
    xs = X.numpy().copy()
    xs[0] = xs[0][:, :, ::-1]
    students, targets = [], []
    for i in range(2):
        t, t2 = sig[index[i]], sig[index[i] + 1]
        xt = xs[i] + t * EPS[i].numpy()
        dd = (xt - teacher.numpy(xt, t)) / t
        xe = xt + (t2 - t) * dd
        x2 = xt + (t2 - t) * 0.5 * (dd + (xe - teacher.numpy(xe, t2)) / t2)
        students.append((xt, t))
        targets.append(g.numpy(x2, t2))  # the online weights, evaluated at the teacher's Heun step
    expected = [np.mean((g.numpy(xt, t) - y) ** 2) for (xt, t), y in zip(students, targets)]
    np.testing.assert_allclose(loss.detach().numpy(), expected, rtol=1e-10)
    # the gradient flows through the student call only: that of the student against a constant target
    loss.sum().backward()
    w = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    total = 0
    for (xt, t), y in zip(students, targets):
        xt = torch.from_numpy(np.ascontiguousarray(xt))
        c_skip, c_out, c_in = 0.25 / (t**2 + 0.25), t * 0.5 / np.sqrt(t**2 + 0.25), 1 / np.sqrt(t**2 + 0.25)
        student = c_skip * xt + c_out * torch.tanh(w * c_in * xt + 0.1)
        total = total + ((student - torch.from_numpy(y)) ** 2).mean()
    total.backward()
    assert g.w.grad.item() == pytest.approx(w.grad.item(), rel=1e-10)


class RecordingNoise(FixedNoise):
    """FixedNoise that also records the (low, high) of every randint call."""

    def __init__(self, *draws):
        super().__init__(*draws)
        self.ranges = []

    def randint(self, low, high, *shape):
        self.ranges.append((low, high))
        return super().randint(low, high, *shape)


def test_dmd_generator_indices_run_from_20_to_980_inclusive():
    d = build_distiller("dmd", FeatureDenoiser(1.3, 0.1))
    noise = RecordingNoise(torch.tensor([980, 20]), EPS)
    d.loss("generator", X, None, None, None, noise, 0)
    assert noise.ranges == [(20, 981)]  # torch.randint's high is exclusive: sigma index 980 (72.05...) is drawn


def test_dmd_gan_draws_independent_noise_levels_for_real_and_fake(monkeypatch):
    d = build_distiller("dmd", FeatureDenoiser(1.3, 0.1), {"gan": True})
    monkeypatch.setattr(d, "_gan_logits", lambda x, sigma, labels, noise: sigma.float())
    noise = RecordingNoise(torch.tensor([5, 6]), EPS, torch.tensor([100, 200]), torch.tensor([700, 900]))
    _, terms = d.loss("fake", X, None, X, None, noise, 0)
    assert noise.ranges == [(0, 1000)] * 3  # the score's sigma, then one each for fake and real
    s = d.sigmas.double()
    expected = F.softplus(s[[100, 200]]) + F.softplus(-s[[700, 900]])
    np.testing.assert_allclose(terms["disc"].numpy(), expected.numpy(), rtol=1e-6)
