"""The grouped path (one network per family for all its inits) against the embedders run one by one:
the same features, the same per-embedder MMD^2, the same gradient to x_gen."""

from __future__ import annotations

import pytest
import torch

from eldistill.embedding import EmbeddingLoss, build_embedder
from eldistill.embedding.embedders import FAMILIES, GroupedEmbedder


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("channels, resolution", [(1, 16), (3, 24)])
def test_grouped_features_equal_separate_embedders(family, channels, resolution, images):
    x = images(5, channels, resolution, seed=3)
    seeds = [7, 8, 9]
    grouped = GroupedEmbedder(family, seeds, channels, working_size=16).double()
    separate = torch.stack([build_embedder(family, s, channels, working_size=16).double()(x.double()) for s in seeds])
    got = grouped(x.double())
    assert got.shape == separate.shape == (3, 5, separate.shape[2])
    torch.testing.assert_close(got, separate, rtol=1e-10, atol=1e-12)
    assert list(grouped.parameters()) == [] and grouped.state_dict() == {}


@pytest.mark.parametrize("feature_norm", ["none", "l2", "standardize"])
@pytest.mark.parametrize("bandwidth_mode, estimator", [("median", "unbiased"), ("fixed", "biased")])
def test_grouped_loss_and_gradient_equal_separate(feature_norm, bandwidth_mode, estimator, images):
    kwargs = dict(
        inits_per_arch=3, working_size=16, in_channels=1, seed=4, feature_norm=feature_norm,
        bandwidth_mode=bandwidth_mode, estimator=estimator,
    )  # fmt: skip
    x_real = images(7, 1, 16, seed=2)
    results = []
    for grouped in (True, False):
        el = EmbeddingLoss(grouped=grouped, **kwargs).double()
        x_gen = images(6, 1, 16, seed=1, shift=0.3).double().requires_grad_()
        value, per = el(x_gen, x_real)
        value.backward()
        results.append((value.detach(), per.detach(), x_gen.grad, el.features(x_real.double())))
    (v_g, per_g, grad_g, feat_g), (v_s, per_s, grad_s, feat_s) = results
    assert per_g.shape == (16 * 3 // 4,) == per_s.shape
    torch.testing.assert_close(per_g, per_s, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(v_g, v_s, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad_g, grad_s, rtol=1e-8, atol=1e-12)
    assert len(feat_g) == len(feat_s) == 4
    for a, b in zip(feat_g, feat_s, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_grouped_float32_matches_separate_within_round_off(images):
    x_gen, x_real = images(32, 1, 16, seed=1, shift=0.2), images(32, 1, 16, seed=2)
    grouped = EmbeddingLoss(in_channels=1, working_size=16)(x_gen, x_real)[1]
    separate = EmbeddingLoss(in_channels=1, working_size=16, grouped=False)(x_gen, x_real)[1]
    torch.testing.assert_close(grouped, separate, rtol=1e-4, atol=1e-5)  # MMD^2 ~1e-3: a difference of kernel sums ~1e3
