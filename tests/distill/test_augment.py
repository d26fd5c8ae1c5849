"""EDM's augmentation pipeline against the known transform of a fixed draw, its 9 labels, its independence of
how the batch is split, and its use by the fake score."""

from __future__ import annotations

import math

import pytest
import torch

from eldistill.distillers import build_distiller
from eldistill.distillers.augment import NUM_LABELS, augment
from eldistill.distillers.base import SampleNoise

H = W = 16
ON, OFF = 0.0, 0.99  # a gate draw below / above p * multiplier (p = 0.5)


class Draws(SampleNoise):
    """Hands out the given per-sample draws in call order."""

    def __init__(self, *draws):
        self.draws = [torch.as_tensor(d, dtype=torch.float32) for d in draws]

    def _next(self):
        return self.draws.pop(0)

    def rand(self, *shape):
        return self._next()

    def randn(self, *shape):
        return self._next()

    def randint(self, low, high, *shape):
        return self._next().long()


def draws(xflip=0, yflip=0, scale=None, rotate=None, aniso=None, translate=None):
    """One sample's draws in the pipeline's order; each transform is off unless its value is given."""
    gate = lambda v: [ON] if v is not None else [OFF]  # noqa: E731
    out = [[xflip], [ON], [yflip], [ON]]
    out += [[scale or 0.0], gate(scale)]
    out += [[0.5 if rotate is None else (rotate / math.pi + 1) / 2], gate(rotate)]
    a, r = aniso or (0.0, 0.0)
    out += [[a], [(r / math.pi + 1) / 2], gate(aniso), [ON if aniso else OFF]]
    out += [[list(translate or (0.0, 0.0))], gate(translate)]
    return out


def smooth_image(n: int = 1) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    base = torch.sin(xx / 3) + torch.cos(yy / 4) + 0.1 * xx
    return torch.stack([base * (1 + 0.1 * i) for i in range(n)])[:, None]


def run(image, per_sample_draws, p=0.5):
    """Augment a batch whose sample i gets per_sample_draws[i]."""
    count = len(per_sample_draws[0])
    columns = [torch.cat([torch.as_tensor(d[k], dtype=torch.float32) for d in per_sample_draws]) for k in range(count)]
    columns[12] = columns[12].reshape(-1, 2)  # the translation draw is (n, 2)
    return augment(image, Draws(*columns), p)


def test_identity_draw_returns_the_image_and_zero_labels():
    image = smooth_image()
    out, labels = run(image, [draws()])
    torch.testing.assert_close(out, image, atol=1e-5, rtol=0)  # the anti-aliased resampling is near-lossless
    assert labels.shape == (1, NUM_LABELS) and not labels.any()


def test_flips_are_exact_and_labelled():
    image = smooth_image()
    out, labels = run(image, [draws(xflip=1)])
    torch.testing.assert_close(out, image.flip(3), atol=1e-5, rtol=0)
    assert labels[0].tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0]
    out, labels = run(image, [draws(yflip=1)])
    torch.testing.assert_close(out, image.flip(2), atol=1e-5, rtol=0)
    assert labels[0].tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 0]


def test_translation_by_whole_pixels_shifts_the_image():
    image = smooth_image()
    shift = 2  # pixels: the draw is in units of 0.125 x the image width
    out, labels = run(image, [draws(translate=(shift / (W * 0.125), 0.0))])
    # EDM samples the input at G_inv p = p - t: the content moves right by t
    torch.testing.assert_close(out[..., shift + 1 : -1], image[..., 1 : -shift - 1], atol=1e-5, rtol=0)
    assert labels[0, 7].item() == pytest.approx(shift / (W * 0.125)) and labels[0, 8] == 0


def test_quarter_turn_samples_the_input_at_the_rotated_position():
    image = smooth_image()
    out, labels = run(image, [draws(rotate=math.pi / 2)])
    # output(x, y) = input(R(pi/2) (x, y)) = input(-y, x) in centred coordinates: out[i, j] = in[j, W-1-i]
    expected = image.flip(3).transpose(2, 3)
    other_way = image.transpose(2, 3).flip(3)
    inner = (..., slice(2, -2), slice(2, -2))
    assert (out - expected)[inner].abs().max() < 0.1  # sym6 is not symmetric: a quarter turn is not lossless
    assert (out - other_way)[inner].abs().max() > 1.0
    assert labels[0, 3].item() == pytest.approx(-1.0) and labels[0, 4].item() == pytest.approx(1.0)


def test_labels_follow_edms_layout():
    image = smooth_image()
    _, labels = run(image, [draws(xflip=1, yflip=0, scale=0.3, rotate=0.4, aniso=(0.7, 0.5), translate=(0.1, -0.2))])
    expected = [1, 0, 0.3, math.cos(0.4) - 1, math.sin(0.4), 0.7 * math.cos(0.5), 0.7 * math.sin(0.5), 0.1, -0.2]
    assert labels[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_probability_zero_changes_nothing():
    image = smooth_image()
    out, labels = run(image, [draws(xflip=1, scale=0.5, rotate=1.0, translate=(0.3, 0.3))], p=0.0)
    torch.testing.assert_close(out, image, atol=1e-5, rtol=0)
    assert not labels.any()


def test_a_sample_does_not_depend_on_the_rest_of_its_batch():
    image = smooth_image(4)
    per_sample = [draws(), draws(rotate=0.3), draws(scale=-1.0, translate=(0.5, 0.2)), draws(aniso=(1.0, 0.3))]
    whole, whole_labels = run(image, per_sample)
    for i in range(4):
        alone, alone_labels = run(image[i : i + 1], per_sample[i : i + 1])
        torch.testing.assert_close(whole[i : i + 1], alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(whole_labels[i : i + 1], alone_labels)


def test_the_fake_score_trains_on_augmented_images_with_their_labels(net_factory, monkeypatch):
    from eldistill.nets import build_network

    plain = net_factory()
    with pytest.raises(ValueError, match="augment_p"):
        build_distiller("sid", plain, augment_p=0.12)  # a teacher without augment labels
    teacher = build_network({**plain.config, "augment_dim": NUM_LABELS})
    d = build_distiller("sid", teacher, augment_p=1.0)
    fake = d.nets["fake_score"]
    seen = []
    original = fake.forward

    def record(x, sigma, class_labels=None, augment_labels=None, **kwargs):
        seen.append(augment_labels)
        return original(x, sigma, class_labels, augment_labels=augment_labels, **kwargs)

    monkeypatch.setattr(fake, "forward", record)
    gen = torch.Generator().manual_seed(0)

    class Noise(SampleNoise):
        def randn(self, *shape):
            return torch.randn(2, *shape, generator=gen)

        def rand(self, *shape):
            return torch.rand(2, *shape, generator=gen)

        def randint(self, low, high, *shape):
            return torch.randint(low, high, (2, *shape), generator=gen)

    loss, _ = d.loss("fake", torch.randn(2, 1, 8, 8, generator=gen), None, None, None, Noise(), 0)
    assert torch.isfinite(loss).all()
    assert len(seen) == 1 and seen[0].shape == (2, NUM_LABELS) and seen[0].abs().sum() > 0
