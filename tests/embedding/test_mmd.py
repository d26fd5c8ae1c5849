"""mmd2 against a float64 computation written straight from the definition, plus its statistical properties."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch.utils.checkpoint import checkpoint

from eldistill.embedding import NonFiniteInputError, median_distance, mmd2
from eldistill.embedding import mmd as mmd_module
from eldistill.embedding.mmd import pairwise_sq_dists


def k_ref(a, b, bandwidths):
    d2 = sum((float(p) - float(q)) ** 2 for p, q in zip(a, b))
    return sum(math.exp(-d2 / (2 * s * s)) for s in bandwidths)


def mmd2_ref(x, y, bandwidths, estimator):
    """Double loops over pairs, in Python floats (float64)."""
    x, y = x.tolist(), y.tolist()
    n, m = len(x), len(y)
    if estimator == "biased":
        xx = sum(k_ref(a, b, bandwidths) for a in x for b in x) / n**2
        yy = sum(k_ref(a, b, bandwidths) for a in y for b in y) / m**2
    else:
        xx = sum(k_ref(x[i], x[j], bandwidths) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        yy = sum(k_ref(y[i], y[j], bandwidths) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k_ref(a, b, bandwidths) for a in x for b in y) / (n * m)
    return xx + yy - 2 * xy


BANDWIDTH_SETS = [[1.0], [0.5, 1.0, 2.0, 4.0], [0.1, 10.0]]


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("bandwidths", BANDWIDTH_SETS)
def test_matches_float64_definition(estimator, bandwidths):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = torch.randn(6, 5, generator=g, dtype=torch.float64) * 1.5 + 0.3
    want = mmd2_ref(x, y, bandwidths, estimator)
    assert mmd2(x, y, bandwidths, estimator).item() == pytest.approx(want, rel=1e-10, abs=1e-12)
    got32 = mmd2(x.float(), y.float(), bandwidths, estimator)
    assert got32.dtype == torch.float32
    assert got32.item() == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_biased_of_a_set_with_itself_is_zero():
    x = torch.randn(32, 10, generator=torch.Generator().manual_seed(0))
    assert abs(mmd2(x, x, [0.5, 1.0, 2.0], "biased").item()) < 1e-6
    assert abs(mmd2(x, x.clone(), [1.0], "biased").item()) < 1e-6


def test_unbiased_is_zero_on_average_for_one_distribution_and_biased_is_not():
    g = torch.Generator().manual_seed(2)
    unbiased, biased = [], []
    for _ in range(300):
        x, y = torch.randn(2, 12, 4, generator=g, dtype=torch.float64)
        unbiased.append(mmd2(x, y, [1.0, 2.0], "unbiased").item())
        biased.append(mmd2(x, y, [1.0, 2.0], "biased").item())
    u, b = np.array(unbiased), np.array(biased)
    se = u.std(ddof=1) / math.sqrt(len(u))
    assert abs(u.mean()) < 4 * se
    assert b.mean() > 10 * se  # the V-statistic's positive bias: this check can tell the two apart


def test_grows_with_mean_shift():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(200, 3, generator=g), torch.randn(200, 3, generator=g)
    values = [mmd2(x, y + shift, [0.5, 1.0, 2.0, 4.0]).item() for shift in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in itertools.pairwise(values)), values
    assert abs(values[0]) < 0.02 < values[2]


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_gradcheck_float64(estimator):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: mmd2(a, b, [0.7, 2.0], estimator), (x, y))


def test_float32_far_from_origin_stays_finite_and_close():
    # ||a||^2 + ||b||^2 - 2ab cancels catastrophically far from the origin; the clamp keeps distances >= 0.
    g = torch.Generator().manual_seed(5)
    x = 300.0 + torch.randn(16, 8, generator=g, dtype=torch.float64) * 1e-3
    d2 = pairwise_sq_dists(x.float(), x.float())
    assert bool((d2 >= 0).all())
    value = mmd2(x.float(), x.float() + 1e-3, [1.0], "biased")
    assert torch.isfinite(value) and abs(value.item()) < 1e-2


def test_median_distance_is_the_median_of_pooled_pairs_without_gradient():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 3, generator=g, dtype=torch.float64)
    z = torch.cat([x, y]).detach().numpy()
    pairs = [np.linalg.norm(z[i] - z[j]) for i in range(6) for j in range(i + 1, 6)]  # 15: an odd count
    med = median_distance(x, y)
    assert med.item() == pytest.approx(float(np.median(pairs)), rel=1e-12)
    assert not med.requires_grad


def test_half_precision_inputs_are_computed_in_float32():
    x, y = torch.randn(8, 4).bfloat16(), torch.randn(8, 4).bfloat16()
    want = mmd2(x.double(), y.double(), [1.0], "biased").item()
    got = mmd2(x, y, [1.0], "biased")
    assert got.dtype == torch.float32 and got.item() == pytest.approx(want, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(
    "x, y, kwargs, match",
    [
        (torch.randn(4, 3), torch.randn(4, 5), {}, "feature dims differ"),
        (torch.randn(0, 3), torch.randn(4, 3), {}, "x is empty"),
        (torch.randn(4, 3), torch.randn(1, 3), {}, "unbiased estimator needs at least 2"),
        (torch.randn(4, 3), torch.tensor([[0.0, float("nan"), 0.0]] * 3), {}, "y contains NaN or inf"),
        (torch.full((3, 3), float("inf")), torch.randn(4, 3), {}, "x contains NaN or inf"),
        (torch.randn(4), torch.randn(4, 3), {}, "2-D feature matrix"),
        (torch.randn(4, 3), torch.randn(4, 3), {"estimator": "plugin"}, "estimator"),
        (torch.randn(4, 3), torch.randn(4, 3), {"bandwidths": [1.0, 0.0]}, "positive"),
        (torch.randn(4, 3), torch.randn(4, 3), {"bandwidths": []}, "empty"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(x, y, kwargs, match):
    kwargs = {"bandwidths": [1.0], **kwargs}
    with pytest.raises(ValueError, match=match):
        mmd2(x, y, **kwargs)


def test_biased_accepts_a_single_sample_and_nonfinite_is_its_own_error():
    assert torch.isfinite(mmd2(torch.randn(1, 3), torch.randn(2, 3), [1.0], "biased"))
    with pytest.raises(NonFiniteInputError):
        mmd2(torch.randn(3, 3), torch.tensor([[float("nan")] * 3] * 2), [1.0])


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("n, m", [(9, 9), (9, 6), (8, 11)])  # blocks that do and do not divide the rows
def test_a_family_beyond_the_block_size_gives_the_same_loss_gradient_and_median(monkeypatch, estimator, n, m):
    """The blocked path (batches whose kernels would not fit memory: the batch-8192 cells) against the one-shot
    one and the float64 definition, with a block size small enough that it runs at these sizes."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, n, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, m, 3, generator=g, dtype=torch.float64) + 0.3
    bandwidths = torch.tensor([[0.5, 1.0, 2.0], [1.0, 2.0, 4.0]], dtype=torch.float64)

    def loss_and_grad():
        value = mmd_module.batched_mmd2_unchecked(x, y, bandwidths, estimator)
        (grad,) = torch.autograd.grad(value.sum(), x)
        return value.detach(), grad, mmd_module.batched_median_distance(x, y)

    one_shot = loss_and_grad()
    monkeypatch.setattr(mmd_module, "BLOCK_ELEMENTS", 40)  # blocks of 1-3 rows at these sizes
    calls = []
    monkeypatch.setattr(mmd_module, "checkpoint", lambda fn, *a, **kw: calls.append(1) or checkpoint(fn, *a, **kw))
    blocked = loss_and_grad()
    assert calls, "the blocked path did not run"
    for a, b in zip(one_shot, blocked):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    for k in range(2):
        expected = mmd2_ref(x[k].detach(), y[k], bandwidths[k].tolist(), estimator)
        assert blocked[0][k].item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
        z = torch.cat([x[k], y[k]]).detach().numpy()
        pairs = sorted(float(np.sum((z[i] - z[j]) ** 2)) for i in range(n + m) for j in range(i + 1, n + m))
        assert blocked[2][k].item() == pytest.approx(math.sqrt(pairs[(len(pairs) - 1) // 2]), rel=1e-12)
