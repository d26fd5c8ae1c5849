"""EDM's Heun sampler on a Gaussian data distribution, whose denoiser and probability-flow ODE are
known in closed form: data N(mu, s^2) per pixel gives D(x; sigma) = mu + s^2/(s^2 + sigma^2) (x - mu),
and the ODE maps x(sigma_max) to mu + (x(sigma_max) - mu) sqrt((s^2 + sigma^2) / (s^2 + sigma_max^2))."""

from __future__ import annotations

import math

import torch

from eldistill.nets.sampler import heun_sample, karras_sigmas

MU, S = 0.3, 0.5  # S = sigma_data, the spread EDM is tuned for


class GaussianDenoiser(torch.nn.Module):
    sigma_min, sigma_max = 0.0, math.inf

    def __init__(self, mu=MU):
        super().__init__()
        self.calls = 0
        self.mu = mu

    def forward(self, x, sigma, class_labels=None):
        self.calls += 1
        assert x.dtype == torch.float32 and sigma.shape == (x.shape[0],)
        s2 = sigma.double().reshape(-1, 1, 1, 1) ** 2
        return (self.mu + S**2 / (S**2 + s2) * (x.double() - self.mu)).float()


def exact_flow(noise, sigma_max=80.0):
    x_start = noise.double() * sigma_max
    return MU + (x_start - MU) * S / math.sqrt(S**2 + sigma_max**2)


def test_karras_grid_closed_form():
    sig = karras_sigmas(18, 0.002, 80.0, 7.0)
    assert sig.shape == (19,) and sig[-1] == 0
    assert math.isclose(sig[0].item(), 80.0, rel_tol=1e-12) and math.isclose(sig[17].item(), 0.002, rel_tol=1e-12)
    mid = (80 ** (1 / 7) + 0.5 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert math.isclose(karras_sigmas(3, 0.002, 80.0)[1].item(), mid, rel_tol=1e-12)


def heun_factor(num_steps, sigma_max=80.0, sigma_min=0.002, rho=7.0):
    """The 18-step Heun scheme on this linear ODE is y -> a y (y = x - MU); a by hand, step by step."""
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    grid = [(hi + i / (num_steps - 1) * (lo - hi)) ** rho for i in range(num_steps)] + [0.0]
    f = lambda sigma: sigma / (S**2 + sigma**2)  # noqa: E731  dy/dsigma = y f(sigma)
    a = 1.0
    for i in range(num_steps):
        t, t_next = grid[i], grid[i + 1]
        h = t_next - t
        if i < num_steps - 1:
            a *= 1 + h / 2 * (f(t) + (1 + h * f(t)) * f(t_next))
        else:
            a *= 1 + h * f(t)
    return a


def test_18_steps_cost_35_evaluations_and_match_the_discrete_scheme():
    net = GaussianDenoiser()
    noise = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = heun_sample(net, noise)
    assert net.calls == 35 and out.dtype == torch.float32 and out.shape == noise.shape
    expected = MU + heun_factor(18) * (noise.double() * 80.0 - MU)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=2e-6)


def test_fine_grid_gives_the_data_mean_and_variance():
    noise = torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(3))  # 16384 scalar samples
    out = heun_sample(GaussianDenoiser(), noise, num_steps=128).double()
    n = out.numel()
    assert abs(out.mean().item() - MU) < 4 * S / math.sqrt(n) + MU * S / 80  # + the mean's shrink by the start
    assert abs(out.var().item() / S**2 - 1) < 4 * math.sqrt(2 / n) + 0.01


def test_converges_to_the_exact_flow_map_at_second_order():
    noise = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    exact = exact_flow(noise)
    errors = [
        (heun_sample(GaussianDenoiser(), noise, num_steps=n).double() - exact).abs().max().item() for n in (36, 72)
    ]
    assert errors[0] < 0.05
    assert errors[1] < errors[0] / 3  # doubling the steps cuts the error ~4x (Heun is second order)


def test_stochastic_variant_is_seeded_and_costs_the_same():
    noise = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    net = GaussianDenoiser()
    a = heun_sample(net, noise, num_steps=8, S_churn=40, generator=torch.Generator().manual_seed(5))
    b = heun_sample(GaussianDenoiser(), noise, num_steps=8, S_churn=40, generator=torch.Generator().manual_seed(5))
    c = heun_sample(GaussianDenoiser(), noise, num_steps=8)
    assert net.calls == 15
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-4


def test_guidance_extrapolates_between_two_denoisers():
    """Two Gaussian denoisers with means m_g, m_n: g + w (n - g) is the denoiser of mean m_g + w (m_n - m_g)."""
    noise = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    net, guide = GaussianDenoiser(mu=0.3), GaussianDenoiser(mu=-0.1)
    guided = heun_sample(net, noise, num_steps=12, guide_net=guide, guidance=2.5)
    expected = heun_sample(GaussianDenoiser(mu=-0.1 + 2.5 * 0.4), noise, num_steps=12)
    torch.testing.assert_close(guided, expected, rtol=0, atol=2e-5)
    assert guide.calls == 23
    plain = heun_sample(GaussianDenoiser(mu=0.3), noise, num_steps=12)
    torch.testing.assert_close(heun_sample(net, noise, num_steps=12, guide_net=guide, guidance=1.0), plain)
