"""The miniature classifier: held-out accuracy recorded, features usable, bad datasets refused."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from eldistill.metrics.classifier import ClassifierFeatures, load_classifier, train_classifier


def test_classifier_learns_digits_and_records_accuracy(classifier):
    path, meta = classifier
    assert meta["test_accuracy"] > 0.85 and meta["num_test"] == 180 and meta["num_train"] == 1617
    model, loaded = load_classifier(path)
    assert loaded == meta
    features = ClassifierFeatures(path)
    assert f"test_acc={meta['test_accuracy']:.4f}" in features.id
    # greyscale replicated to RGB gives the same features as the greyscale image itself
    x = torch.randint(0, 256, (4, 1, 16, 16)).to(torch.float32)
    torch.testing.assert_close(features(x.repeat(1, 3, 1, 1)), model.features(x / 127.5 - 1))
    with pytest.raises(ValueError, match="trained on 1x16"):
        features.check_images(1, 32)
    with pytest.raises(ValueError, match="cannot embed 3x16"):
        features.check_images(3, 16)  # colour images would be silently averaged to grey


def test_unlabelled_dataset_and_foreign_file_refused(tmp_path):
    path = tmp_path / "unlabelled.zip"
    with zipfile.ZipFile(path, "w") as z:
        for i in range(4):
            buffer = io.BytesIO()
            Image.fromarray(np.full((16, 16), i * 60, np.uint8)).save(buffer, format="PNG")
            z.writestr(f"img{i}.png", buffer.getvalue())
    with pytest.raises(ValueError, match="unlabelled.zip: the classifier needs class labels"):
        train_classifier(path, tmp_path / "c.pt", epochs=1)
    torch.save({"format": "something-else"}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="foreign.pt: not an eldistill-classifier-v1"):
        load_classifier(tmp_path / "foreign.pt")


def test_labels_with_classes_no_image_has_are_refused(tmp_path):
    """One stray index among digits (500) would train a 501-way classifier on ten classes."""
    path = tmp_path / "stray.zip"
    labels = []
    with zipfile.ZipFile(path, "w") as z:
        for i in range(4):
            buffer = io.BytesIO()
            Image.fromarray(np.full((16, 16), i * 60, np.uint8)).save(buffer, format="PNG")
            z.writestr(f"img{i}.png", buffer.getvalue())
            labels.append([f"img{i}.png", [0, 1, 1, 500][i]])
        z.writestr("dataset.json", json.dumps({"labels": labels}))
    with pytest.raises(ValueError, match="labels go up to 500 but classes 2, 3, 4, 5, 6 and 493 more have no image"):
        train_classifier(path, tmp_path / "c.pt", epochs=1)
    args = ["train-classifier", "--dataset", str(path), "--out", str(tmp_path / "c")]
    out = subprocess.run([sys.executable, "-m", "eldistill.cli", *args], capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" not in out.stderr and "have no image" in out.stderr
