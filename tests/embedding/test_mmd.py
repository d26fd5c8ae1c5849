"""mmd2 against a float64 computation written straight from the definition, plus its statistical properties."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from eldistill.embedding import NonFiniteInputError, median_distance, mmd2
from eldistill.embedding import mmd as mmd_module
from eldistill.embedding.loss import family_mmd2
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


# --- The tiled path (one family above BLOCK_ELEMENTS: batches above 1024), at test sizes -------------------------


def use_tiles(monkeypatch, tile):
    """Sends every family through the tiled path with (tile, tile) tiles; returns the list of tiles made, so a test
    can check that the path ran."""
    made = []
    monkeypatch.setattr(mmd_module, "BLOCK_ELEMENTS", 40)
    monkeypatch.setattr(mmd_module, "TILE", tile)
    make = mmd_module._sq_dist_tile
    monkeypatch.setattr(mmd_module, "_sq_dist_tile", lambda *args: made.append(1) or make(*args))
    return made


def route_median(monkeypatch, route):
    """Forces one of the ways the tiled median is found; returns the list of exact-counting calls."""
    counted = []
    if route == "window":  # a wide window, so that the sample's quantiles surely bracket the median
        monkeypatch.setattr(mmd_module, "MEDIAN_WINDOW", 0.3)
    elif route == "window missed":  # the window holds only distances of 0: the median lies above it
        monkeypatch.setattr(mmd_module, "_median_window", lambda *args: (0.0, 0.0))
    elif route == "window over its cap":
        monkeypatch.setattr(mmd_module, "MEDIAN_WINDOW_CAP", 0)
    elif route == "window next to the median":  # it holds every distance below the median and nothing else

        def below_the_median(z, z_sq, rank, pairs):
            d2 = mmd_module._sq_dist_tile(z, z_sq, z, z_sq)
            values = d2[torch.ones_like(d2, dtype=torch.bool).triu(1)].sort().values
            return values[0].item(), values[rank - 1].item()

        monkeypatch.setattr(mmd_module, "_median_window", below_the_median)
    select = mmd_module._radix_select
    monkeypatch.setattr(mmd_module, "_radix_select", lambda *args: counted.append(1) or select(*args))
    return counted


def loss_grads_median(x, y, bandwidths, estimator):
    """batched_mmd2_unchecked's value and its gradients with respect to x, y and bandwidths (weighted per
    embedder, so that a gradient mixed up between embedders shows), and batched_median_distance."""
    x, y, bandwidths = (t.detach().requires_grad_(True) for t in (x, y, bandwidths))
    value = mmd_module.batched_mmd2_unchecked(x, y, bandwidths, estimator)
    weights = torch.arange(1.0, value.shape[0] + 1, dtype=value.dtype)
    grads = torch.autograd.grad((value * weights).sum(), (x, y, bandwidths))
    return value.detach(), *grads, mmd_module.batched_median_distance(x, y)


def sorted_pairs(z):
    return sorted(float(np.sum((z[i] - z[j]) ** 2)) for i in range(len(z)) for j in range(i + 1, len(z)))


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("n, m", [(9, 9), (9, 6), (8, 11), (8, 9)])  # 153, 105, 171 and 136 pooled pairs
@pytest.mark.parametrize(
    "tile, route",
    [(2, "window"), (3, "window missed"), (4, "window over its cap"), (3, "window next to the median")],
)
def test_a_family_beyond_the_block_size_gives_the_same_loss_gradients_and_median(
    monkeypatch, estimator, n, m, tile, route
):
    """The tiled path against the one-shot one and the float64 definition: value, gradients with respect to x, y
    and the bandwidths, and the median by each of its routes, with tiles that do and do not divide the rows."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, n, 3, generator=g, dtype=torch.float64)
    y = torch.randn(2, m, 3, generator=g, dtype=torch.float64) + 0.3
    bandwidths = torch.tensor([[0.5, 1.0, 2.0], [1.0, 2.0, 4.0]], dtype=torch.float64)
    one_shot = loss_grads_median(x, y, bandwidths, estimator)
    tiles, counted = use_tiles(monkeypatch, tile), route_median(monkeypatch, route)
    tiled = loss_grads_median(x, y, bandwidths, estimator)
    assert tiles, "the tiled path did not run"
    assert bool(counted) == (route != "window"), "the median took another route than the test meant"
    for a, b in zip(one_shot, tiled, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)
    for k in range(2):
        expected = mmd2_ref(x[k], y[k], bandwidths[k].tolist(), estimator)
        assert tiled[0][k].item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
        pairs = sorted_pairs(torch.cat([x[k], y[k]]).numpy())
        assert tiled[4][k].item() == pytest.approx(math.sqrt(pairs[(len(pairs) - 1) // 2]), rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("route", ["window", "window missed", "window over its cap"])
def test_the_tiled_median_is_exactly_the_lower_median_among_many_ties(monkeypatch, dtype, route):
    """Small integer coordinates: every distance is an exact integer in every dtype (so any formula gives the
    same values) and many are equal, the hard case for a selection by counting."""
    g = torch.Generator().manual_seed(8)
    x = torch.randint(0, 3, (3, 10, 3), generator=g).to(dtype)
    y = torch.randint(0, 3, (3, 7, 3), generator=g).to(dtype)
    y[2] = x[2, 0]  # most pooled points equal
    x[2] = x[2, 0]  # all equal: median distance 0, given as 1 (any bandwidth gives MMD 0)
    one_shot = mmd_module.batched_median_distance(x, y)
    use_tiles(monkeypatch, 3)
    counted = route_median(monkeypatch, route)
    tiled = mmd_module.batched_median_distance(x, y)
    assert bool(counted) == (route != "window")
    assert tiled.dtype == one_shot.dtype == dtype
    assert torch.equal(tiled, one_shot)
    for k in range(2):
        pairs = sorted_pairs(torch.cat([x[k], y[k]]).double().numpy())
        assert tiled[k] == torch.tensor(pairs[(len(pairs) - 1) // 2], dtype=dtype).sqrt()
    assert tiled[2].item() == 1.0


def test_the_tiled_path_keeps_float32_exact_zeros_on_the_diagonal(monkeypatch):
    """Far from the origin ||a||^2 + ||a||^2 - 2 a.a leaves round-off (here ~0.05) where the distance of a point to
    itself is exactly 0. Points ~10 apart and a bandwidth of 0.1: every kernel value is 0 but k(a, a) = 1, which
    the unbiased estimator removes, so MMD^2 is 0 only if both paths put exact zeros on the diagonal."""
    g = torch.Generator().manual_seed(13)
    x = 300.0 + torch.randn(2, 9, 8, generator=g) * 5
    y = 300.0 + torch.randn(2, 7, 8, generator=g) * 5
    bandwidths = torch.full((2, 1), 0.1)
    one_shot = mmd_module.batched_mmd2_unchecked(x, y, bandwidths, "unbiased")
    use_tiles(monkeypatch, 4)
    tiled = mmd_module.batched_mmd2_unchecked(x, y, bandwidths, "unbiased")
    assert one_shot.tolist() == tiled.tolist() == [0.0, 0.0]


def test_the_tiled_path_with_nonfinite_features_gives_what_the_one_shot_one_gives(monkeypatch):
    g = torch.Generator().manual_seed(9)
    x, y = torch.randn(2, 6, 3, generator=g), torch.randn(2, 5, 3, generator=g)
    x[0, 2, 1] = float("nan")
    y[1, 0, 0] = float("inf")
    bandwidths = torch.ones(2, 2)
    one_shot = mmd_module.batched_median_distance(x, y), mmd_module.batched_mmd2_unchecked(x, y, bandwidths, "unbiased")
    use_tiles(monkeypatch, 4)
    tiled = mmd_module.batched_median_distance(x, y), mmd_module.batched_mmd2_unchecked(x, y, bandwidths, "unbiased")
    assert one_shot[0].tolist() == tiled[0].tolist() == [1.0, 1.0]  # NaN median: the bandwidth falls back to 1
    assert torch.isnan(one_shot[1]).all() and torch.isnan(tiled[1]).all()


def test_the_tiled_path_takes_half_precision_as_the_one_shot_one(monkeypatch):
    """bfloat16 features: the value comes in float32 (the promotion with float32 bandwidths) and the gradient in
    bfloat16, both agreeing with the one-shot path up to bfloat16's round-off, also inside an autocast region."""
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2, 9, 4, generator=g).bfloat16()
    y = (torch.randn(2, 7, 4, generator=g) + 0.5).bfloat16()
    bandwidths = torch.tensor([[1.0, 2.0], [2.0, 4.0]])
    one_shot = loss_grads_median(x, y, bandwidths, "unbiased")
    use_tiles(monkeypatch, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tiled = loss_grads_median(x, y, bandwidths, "unbiased")
    assert [t.dtype for t in tiled] == [t.dtype for t in one_shot]
    assert [t.dtype for t in tiled] == [torch.float32, torch.bfloat16, torch.bfloat16, torch.float32, torch.bfloat16]
    for a, b in zip(one_shot, tiled, strict=True):
        torch.testing.assert_close(b.float(), a.float(), rtol=0.03, atol=2e-3)


def test_the_tiled_path_without_gradient_gives_the_same_value_and_no_graph(monkeypatch):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 8, 3, generator=g, dtype=torch.float64)
    bandwidths = torch.ones(2, 3, dtype=torch.float64)
    use_tiles(monkeypatch, 4)
    with_grad = mmd_module.batched_mmd2_unchecked(x, y, bandwidths, "unbiased")
    with torch.no_grad():
        without = mmd_module.batched_mmd2_unchecked(x, y, bandwidths, "unbiased")
    assert with_grad.requires_grad and not without.requires_grad
    assert torch.equal(with_grad.detach(), without)


@pytest.mark.parametrize("feature_norm", ["none", "standardize"])
def test_the_global_el_gradient_through_the_tiled_path(monkeypatch, feature_norm):
    """What eldistill.global_el does with a family's gathered features: the gradient of family_mmd2 with respect to
    the generated features only (torch.autograd.grad), through the feature normalisation and median bandwidth."""
    g = torch.Generator().manual_seed(12)
    f_gen = torch.randn(3, 10, 5, generator=g, dtype=torch.float64) * 2
    f_real = torch.randn(3, 9, 5, generator=g, dtype=torch.float64)

    def value_and_grad():
        gen = f_gen.clone().requires_grad_(True)
        value = family_mmd2(gen, f_real, [0.5, 1.0, 2.0, 4.0], feature_norm=feature_norm)
        return value.detach(), torch.autograd.grad(value.sum(), gen)[0]

    one_shot = value_and_grad()
    tiles = use_tiles(monkeypatch, 3)
    tiled = value_and_grad()
    assert tiles
    for a, b in zip(one_shot, tiled, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)
