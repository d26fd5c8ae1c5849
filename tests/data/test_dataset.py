"""ImageDataset against images the tests write themselves (EDM's zip and folder layouts)."""

from __future__ import annotations

import io
import json
import re
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

from eldistill.data import DatasetError, ImageDataset


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _images(n=6, shape=(5, 5, 3), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=shape, dtype=np.uint8) for _ in range(n)]


def _write_zip(path, images, labels=None, names=None):
    names = names or [f"{i // 1000:05d}/img{i:08d}.png" for i in range(len(images))]
    with zipfile.ZipFile(path, "w") as zf:
        for name, img in zip(names, images):
            zf.writestr(name, _png(img))
        if labels is not None:
            zf.writestr("dataset.json", json.dumps({"labels": [[n, int(y)] for n, y in zip(names, labels)]}))
    return path


def _write_dir(path, images, labels=None):
    path.mkdir()
    names = [f"img{i:03d}.png" for i in range(len(images))]
    for name, img in zip(names, images):
        (path / name).write_bytes(_png(img))
    if labels is not None:
        (path / "dataset.json").write_text(json.dumps({"labels": [[n, int(y)] for n, y in zip(names, labels)]}))
    return path


@pytest.mark.parametrize("layout", ["zip", "dir"])
def test_reads_pixels_labels_and_attributes(tmp_path, layout):
    images, labels = _images(), [3, 0, 2, 2, 1, 0]
    if layout == "zip":
        path = _write_zip(tmp_path / "d.zip", images, labels)
    else:
        path = _write_dir(tmp_path / "d", images, labels)
    ds = ImageDataset(path)
    assert (len(ds), ds.channels, ds.resolution, ds.label_dim) == (6, 3, 5, 4)
    for i in range(6):
        img, label = ds[i]
        assert img.dtype == torch.uint8 and img.shape == (3, 5, 5)
        assert np.array_equal(img.numpy(), images[i].transpose(2, 0, 1))
        assert label == labels[i]


def test_greyscale_png_gives_one_channel_and_no_labels(tmp_path):
    images = _images(shape=(4, 4))
    ds = ImageDataset(_write_zip(tmp_path / "g.zip", images))
    assert (ds.channels, ds.resolution, ds.label_dim) == (1, 4, 0)
    assert np.array_equal(ds[2][0].numpy()[0], images[2])
    assert ds[2][1] == 0
    x, y = ds.sample(3, torch.Generator().manual_seed(0))
    assert y is None and x.shape == (3, 1, 4, 4)


@pytest.mark.parametrize("preload", [False, True])
def test_sample_draws_real_images_scaled_to_unit_range_with_their_one_hot_labels(tmp_path, preload):
    images, labels = _images(n=5), [0, 1, 2, 3, 4]
    ds = ImageDataset(_write_zip(tmp_path / "d.zip", images, labels), preload=preload)
    x, y = ds.sample(200, torch.Generator().manual_seed(1))
    assert x.dtype == torch.float32 and x.shape == (200, 3, 5, 5) and y.shape == (200, 5)
    seen = set()
    for img, onehot in zip(x, y):
        label = int(onehot.argmax())
        assert onehot.sum() == 1
        expected = images[label].transpose(2, 0, 1).astype(np.float64) / 127.5 - 1  # label i <-> image i
        assert np.allclose(img.numpy(), expected, atol=1e-6)
        seen.add(label)
    assert seen == set(range(5))
    # the same generator seed gives the same batch
    x2, _ = ds.sample(200, torch.Generator().manual_seed(1))
    assert torch.equal(x, x2)


def test_missing_path_names_it(tmp_path):
    with pytest.raises(DatasetError, match="nope.zip"):
        ImageDataset(tmp_path / "nope.zip")


def test_corrupt_zip_names_file(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"this is not a zip archive" * 10)
    with pytest.raises(DatasetError, match="bad.zip"):
        ImageDataset(bad)


def test_truncated_zip_names_file(tmp_path):
    good = _write_zip(tmp_path / "good.zip", _images())
    cut = tmp_path / "cut.zip"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DatasetError, match="cut.zip"):
        ImageDataset(cut)


def test_corrupt_png_inside_zip_names_member(tmp_path):
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.png", _png(_images(1)[0]))
        zf.writestr("b.png", b"\x89PNG garbage")
    ds = ImageDataset(path)
    with pytest.raises(DatasetError, match=r"d\.zip:b\.png"):
        ds[1]


@pytest.mark.parametrize("preload", [False, True])
def test_mixed_shapes_name_the_odd_file(tmp_path, preload):
    images = _images(n=3) + [np.zeros((6, 6, 3), np.uint8)]
    path = _write_zip(tmp_path / "m.zip", images, names=["a.png", "b.png", "c.png", "odd.png"])
    with pytest.raises(DatasetError, match="odd.png"):
        ds = ImageDataset(path, preload=preload)
        ds[3]


def test_unlabelled_image_in_dataset_json_is_named(tmp_path):
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.png", _png(_images(1)[0]))
        zf.writestr("b.png", _png(_images(1)[0]))
        zf.writestr("dataset.json", json.dumps({"labels": [["a.png", 1]]}))
    with pytest.raises(DatasetError, match="b.png"):
        ImageDataset(path)


def test_null_labels_mean_unlabelled(tmp_path):
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.png", _png(_images(1)[0]))
        zf.writestr("dataset.json", json.dumps({"labels": None}))
    assert ImageDataset(path).label_dim == 0


@pytest.mark.parametrize("label", [2**35, -1, 1.5, "3", True])
def test_a_label_that_is_no_class_index_is_named(tmp_path, label):
    """A label of 2**35 used to make label_dim 2**35 + 1 (train-classifier then tried to allocate 256 GB)."""
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.png", _png(_images(1)[0]))
        zf.writestr("b.png", _png(_images(1)[0]))
        zf.writestr("dataset.json", json.dumps({"labels": [["a.png", 0], ["b.png", label]]}))
    with pytest.raises(DatasetError, match=re.escape(f"the label of b.png is {label!r}; a label is a class index")):
        ImageDataset(path)
