"""`eldistill prepare-dataset`: EDM dataset_tool.py's layout from a CIFAR-10 python tarball in the real format
(pickled batches) and from folders of images (Lanczos resize, centre crop, labels from sub-folders)."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
import zipfile

import numpy as np
import PIL.Image
import pytest

from eldistill.cli import main
from eldistill.data import ImageDataset
from eldistill.data.prepare import PrepareError, prepare_dataset, transform_image


def cifar_tarball(path, per_batch=3, payload=None):
    """cifar-10-python.tar.gz as published: cifar-10-batches-py/data_batch_1..5 (+ test_batch), each a pickled
    dict with `data` (N, 3072) uint8 rows in CHW order and `labels` a list of ints. Returns (images NHWC, labels)."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]:
            chw = rng.integers(0, 256, size=(per_batch, 3, 32, 32), dtype=np.uint8)
            y = [int(v) for v in rng.integers(0, 10, size=per_batch)]
            record = {"batch_label": name, "labels": y, "data": chw.reshape(per_batch, 3072), "filenames": ["x"] * 3}
            data = payload if (payload is not None and name == "data_batch_2") else pickle.dumps(record, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            if name != "test_batch":
                images.append(chw.transpose(0, 2, 3, 1))
                labels += y
    return np.concatenate(images), labels


def test_cifar10_tarball_in_edm_layout(tmp_path):
    tarball = tmp_path / "cifar-10-python.tar.gz"
    images, labels = cifar_tarball(tarball)
    out = prepare_dataset("cifar10-tarball", tarball, tmp_path / "cifar10-32x32.zip")
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        assert names[:2] == ["00000/img00000000.png", "00000/img00000001.png"] and names[-1] == "dataset.json"
        assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())
        meta = json.loads(zf.read("dataset.json"))
        first = np.array(PIL.Image.open(io.BytesIO(zf.read(names[0]))))
    assert meta["labels"] == [[f"00000/img{i:08d}.png", y] for i, y in enumerate(labels)]  # the 5 train batches
    assert np.array_equal(first, images[0])  # CHW rows -> HWC pixels, no other change
    ds = ImageDataset(out)
    assert (len(ds), ds.channels, ds.resolution, ds.label_dim) == (15, 3, 32, max(labels) + 1)
    assert np.array_equal(ds[14][0].numpy().transpose(1, 2, 0), images[14]) and ds[14][1] == labels[14]
    again = prepare_dataset("cifar10-tarball", tarball, tmp_path / "again.zip")
    assert again.read_bytes() == out.read_bytes()  # deterministic: a stable sha256 for the same source


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = f"cos\nsystem\n(Vtouch {marker}\ntR.".encode()
    tarball = tmp_path / "cifar-10-python.tar.gz"
    cifar_tarball(tarball, payload=evil)
    with pytest.raises(PrepareError, match="os.system"):
        prepare_dataset("cifar10-tarball", tarball, tmp_path / "out.zip")
    assert not marker.exists() and not (tmp_path / "out.zip").exists()


def photo(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_image_folder_resize_and_centre_crop_with_labels_from_subfolders(tmp_path):
    src = tmp_path / "train"
    originals = {}
    for i, (synset, h, w) in enumerate([("n01", 48, 80), ("n01", 64, 64), ("n02", 90, 40)]):
        (src / synset).mkdir(parents=True, exist_ok=True)
        originals[f"{synset}/{i}.png"] = photo(h, w, i)
        PIL.Image.fromarray(originals[f"{synset}/{i}.png"]).save(src / synset / f"{i}.png")
    out = prepare_dataset("image-folder", src, tmp_path / "imagenet-16x16.zip", resolution=16, transform="center-crop")
    ds = ImageDataset(out)
    assert (len(ds), ds.resolution, ds.label_dim) == (3, 16, 2)
    assert [ds[i][1] for i in range(3)] == [0, 0, 1]  # sorted top-level folder names
    # centre crop by hand: the middle 48x48 of the 48x80 image (columns 16..63), then Lanczos to 16x16
    img = originals["n01/0.png"]
    expected = np.array(PIL.Image.fromarray(img[:, 16:64]).resize((16, 16), PIL.Image.Resampling.LANCZOS))
    assert np.array_equal(ds[0][0].numpy().transpose(1, 2, 0), expected)
    # the 90x40 image: rows 25..64
    expected = np.array(
        PIL.Image.fromarray(originals["n02/2.png"][25:65]).resize((16, 16), PIL.Image.Resampling.LANCZOS)
    )
    assert np.array_equal(ds[2][0].numpy().transpose(1, 2, 0), expected)


def test_image_folder_plain_resize_keeps_no_labels(tmp_path):
    src = tmp_path / "images1024x1024" / "00000"  # FFHQ's layout: one level of numbered folders
    src.mkdir(parents=True)
    for i in range(2):
        PIL.Image.fromarray(photo(32, 32, i)).save(src / f"{i:05d}.png")
    out = prepare_dataset("image-folder", src.parent, tmp_path / "ffhq-8x8.zip", resolution=8)
    assert json.loads(zipfile.ZipFile(out).read("dataset.json")) == {"labels": None}
    expected = np.array(PIL.Image.fromarray(photo(32, 32, 1)).resize((8, 8), PIL.Image.Resampling.LANCZOS))
    assert np.array_equal(ImageDataset(out)[1][0].numpy().transpose(1, 2, 0), expected)
    assert transform_image(photo(8, 8, 0), "none", 8) is not None  # already the size: unchanged
    with pytest.raises(PrepareError, match="square, a power of two"):
        prepare_dataset("image-folder", src.parent, tmp_path / "bad.zip", resolution=12)


def test_missing_sources_name_the_file_and_where_to_put_it(tmp_path, capsys):
    missing = tmp_path / "downloads" / "cifar-10-python.tar.gz"
    code = main(["prepare-dataset", "--source", "cifar10-tarball", "--input", str(missing), "--out", "x.zip"])
    err = capsys.readouterr().err
    assert code == 1 and str(missing) in err and "cifar-10-python.tar.gz" in err and "Put it there" in err
    code = main(["prepare-dataset", "--source", "image-folder", "--input", str(tmp_path / "ffhq"), "--out", "x.zip"])
    assert code == 1 and "image folder not found" in capsys.readouterr().err
    code = main(["prepare-dataset", "--source", "zip", "--input", str(tmp_path / "img512.zip"), "--out", "x.zip"])
    assert code == 1 and "dataset_tool.py" in capsys.readouterr().err


def test_a_prepared_zip_is_linked(tmp_path):
    src = tmp_path / "site" / "cifar10-32x32.zip"
    src.parent.mkdir()
    tarball = tmp_path / "cifar-10-python.tar.gz"
    cifar_tarball(tarball, per_batch=1)
    prepare_dataset("cifar10-tarball", tarball, src)
    out = prepare_dataset("zip", src, tmp_path / "results" / "cifar10.zip")
    assert out.is_symlink() and out.resolve() == src.resolve() and len(ImageDataset(out)) == 5
