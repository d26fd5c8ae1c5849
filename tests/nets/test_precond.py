"""Preconditioning against the closed forms (anchors A.0), computed independently in float64."""

from __future__ import annotations

import math

import pytest
import torch

from eldistill.nets import build_network, preset


class RecordingBackbone(torch.nn.Module):
    """Returns a fixed function of its inputs and remembers them, so D can be checked by hand."""

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None, return_features=False):
        self.seen = (x.clone(), noise_labels.clone())
        out = torch.tanh(x) + noise_labels.reshape(-1, 1, 1, 1)
        return (out, x.mean(dim=(2, 3), keepdim=True)) if return_features else out


def closed_form(kind, sigma, sd=0.5, beta_d=19.9, beta_min=0.1, M=1000):
    s = torch.as_tensor(sigma, dtype=torch.float64)
    if kind == "EDMPrecond":
        return sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt(), 1 / (s**2 + sd**2).sqrt(), s.log() / 4
    if kind == "VPPrecond":
        t = ((beta_min**2 + 2 * beta_d * (1 + s**2).log()).sqrt() - beta_min) / beta_d
        return torch.ones_like(s), -s, 1 / (s**2 + 1).sqrt(), (M - 1) * t
    if kind == "VEPrecond":
        return torch.ones_like(s), s, torch.ones_like(s), (s / 2).log()
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["EDMPrecond", "VPPrecond", "VEPrecond"])
def test_denoiser_matches_closed_form(kind):
    net = build_network(preset("mini", class_name=kind))
    net.model = RecordingBackbone()
    torch.manual_seed(0)
    x = torch.randn(5, 1, 16, 16)
    # VP's c_noise takes log(1 + sigma^2) in float32 as EDM does, which loses digits below sigma ~ 0.01.
    sigma = torch.tensor([0.002 if kind != "VPPrecond" else 0.02, 0.1, 0.5, 3.0, 80.0])
    D = net(x, sigma).double()
    c_skip, c_out, c_in, c_noise = (c.reshape(-1, 1, 1, 1) for c in closed_form(kind, sigma.double()))
    x64 = x.double()
    F = torch.tanh(c_in * x64) + c_noise
    expected = c_skip * x64 + c_out * F
    torch.testing.assert_close(D, expected, rtol=2e-5, atol=2e-5)
    rtol = 1e-3 if kind == "VPPrecond" else 1e-5  # float32 cancellation in VP's sigma_inv, as in EDM
    torch.testing.assert_close(net.model.seen[1].double(), c_noise.flatten(), rtol=rtol, atol=1e-5)


def test_vp_sigma_range_closed_form():
    net = build_network(preset("mini", class_name="VPPrecond"))
    # sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)
    assert net.sigma_max == pytest.approx(math.sqrt(math.exp(19.9 / 2 + 0.1) - 1), rel=1e-9)
    assert net.sigma_min == pytest.approx(math.sqrt(math.exp(19.9 / 2 * 1e-10 + 0.1 * 1e-5) - 1), rel=1e-6)


def test_edm_skip_dominates_at_low_noise():
    """At sigma -> 0, c_skip -> 1 and c_out -> 0: the real network returns its input."""
    torch.manual_seed(1)
    net = build_network(preset("mini")).eval()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        d = net(x, torch.full((2,), 1e-6))
    torch.testing.assert_close(d, x, atol=1e-5, rtol=0)


def test_scalar_sigma_broadcasts_and_features_shape():
    torch.manual_seed(2)
    net = build_network(preset("mini", label_dim=10)).eval()
    with torch.no_grad():  # EDM initialises the output conv near zero; give every weight some size
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    x = torch.randn(3, 1, 16, 16)
    labels = torch.nn.functional.one_hot(torch.tensor([1, 4, 9]), 10).float()
    with torch.no_grad():
        a = net(x, 2.5, labels)
        b, feats = net(x, torch.full((3,), 2.5), labels, return_features=True)
    torch.testing.assert_close(a, b)
    assert feats.shape == (3, 32, 8, 8) and a.dtype == torch.float32
    # labels change the output (the label path is wired)
    with torch.no_grad():
        c = net(x, 2.5, labels.roll(1, dims=0))
    assert (a - c).abs().max() > 1e-6
