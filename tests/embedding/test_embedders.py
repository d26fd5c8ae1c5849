"""The embedder zoo: deterministic from (family, seed), frozen, per-sample, any channels and resolution."""

from __future__ import annotations

import pytest
import torch

from eldistill.embedding import FAMILIES, build_embedder
from eldistill.embedding.embedders import resize_to


def weights(e):
    return [b.clone() for b in e.buffers()]


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_embedder_different_seed_different(family, images):
    x = images(4)
    a, b, c = build_embedder(family, 3), build_embedder(family, 3), build_embedder(family, 4)
    assert all(torch.equal(p, q) for p, q in zip(weights(a), weights(b), strict=True))
    assert torch.equal(a(x), b(x))
    assert not torch.allclose(a(x), c(x), atol=1e-3)


def test_families_are_four_architectures_and_names_match_the_config(images):
    from eldistill.cell import EMBEDDER_FAMILIES
    from eldistill.embedding.embedders import AttentionEmbedder, CNNEmbedder, MultiScaleEmbedder, ResNetEmbedder

    assert tuple(FAMILIES) == tuple(EMBEDDER_FAMILIES)
    want = {
        "cnn": CNNEmbedder,
        "multiscale": MultiScaleEmbedder,
        "resnet": ResNetEmbedder,
        "attention": AttentionEmbedder,
    }
    for family in FAMILIES:
        e = build_embedder(family, 0)
        assert type(e.net) is want[family] and e.family == family
    # They see an image differently: the plain CNN is local, the attention network global. Changing the
    # top-left 4x4 pixels of a 32x32 image leaves the CNN's bottom-right pooled cell (receptive field 15
    # pixels, from row and column 17 on) exactly as it was, and changes every attention feature.
    x = images(2, r=32)
    y = x.clone()
    y[:, :, :4, :4] = -y[:, :, :4, :4]
    cnn, attention = build_embedder("cnn", 0), build_embedder("attention", 0)
    far_cell = cnn(x).reshape(2, -1, 4, 4)[..., 3, 3], cnn(y).reshape(2, -1, 4, 4)[..., 3, 3]
    assert torch.equal(*far_cell)
    assert not torch.equal(cnn(x), cnn(y))
    assert bool((attention(x) != attention(y)).all())


def test_building_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    for family in FAMILIES:
        build_embedder(family, 7)
    assert torch.equal(torch.rand(3), want)


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_no_parameters_no_state_eval_mode(family):
    e = build_embedder(family, 0)
    assert list(e.parameters()) == []
    assert e.state_dict() == {}
    assert len(list(e.buffers())) > 0 and not any(b.requires_grad for b in e.buffers())
    e.train()
    assert not any(m.training for m in e.modules())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("channels, resolution", [(1, 8), (3, 32), (4, 64), (3, 512)])
def test_any_channels_and_resolution(family, channels, resolution, images):
    e = build_embedder(family, 0, in_channels=channels, working_size=16)
    f = e(images(2, channels, resolution))
    assert f.shape[0] == 2 and f.dim() == 2 and bool(torch.isfinite(f).all())
    # Features are O(1): squared norms neither vanish nor explode through the random layers.
    assert 1e-3 < f.pow(2).sum(1).mean().item() < 1e2


@pytest.mark.parametrize("family", FAMILIES)
def test_features_are_per_sample(family, images):
    e = build_embedder(family, 1)
    x = images(6, r=32)
    assert torch.allclose(e(x)[:2], e(x[:2]), atol=1e-5)


def test_resize_to_averages_down_and_interpolates_up():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(resize_to(x, 2), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    assert resize_to(x, 8).shape == (1, 1, 8, 8) and resize_to(x, 4) is x


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"family": "vit"}, "unknown embedder family 'vit'"),
        ({"family": "cnn", "in_channels": 2}, "in_channels"),
        ({"family": "cnn", "working_size": 4}, "working_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_embedder(seed=0, **kwargs)
