"""The miniature protocol's feature network: a small CNN classifier trained once on the miniature dataset.

Its penultimate layer (64-d) plays the role Inception's pool3 plays for the paper protocol. The
classifier is trained on a seeded 90 % split and its accuracy on the held-out 10 % is stored in the
checkpoint, and copied into every FID record (via the feature-net id), so a reader can judge how much
the features know about the data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from eldistill.integrity import check_digest, with_digest
from eldistill.io import atomic_torch_save
from eldistill.metrics.protocols import file_digest
from eldistill.untrusted.torch_files import load_torch_file

FORMAT = "eldistill-classifier-v1"


class MiniClassifier(nn.Module):
    def __init__(self, in_channels: int, resolution: int, num_classes: int, width: int = 32, feature_dim: int = 64):
        super().__init__()
        self.config = dict(in_channels=in_channels, resolution=resolution, num_classes=num_classes)
        self.config.update(width=width, feature_dim=feature_dim)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2),
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, stride=2),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(2),  # keeps coarse layout: which quadrant holds ink matters for digits
            nn.Flatten(),
            nn.Linear(8 * width, feature_dim),
        )
        self.head = nn.Sequential(nn.SiLU(), nn.Dropout(0.2), nn.Linear(feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: float (B, C, H, W) in [-1, 1] -> (B, feature_dim), the pre-activation penultimate layer."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _to_unit(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.to(torch.float32) / 127.5 - 1


def _accuracy(model: MiniClassifier, images: torch.Tensor, labels: torch.Tensor, batch: int = 512) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            correct += (model(_to_unit(images[i : i + batch])).argmax(1) == labels[i : i + batch]).sum().item()
    return correct / max(len(images), 1)


def train_classifier(
    dataset: str | Path,
    out: str | Path,
    epochs: int = 15,
    seed: int = 0,
    batch: int = 64,
    lr: float = 2e-3,
    holdout: float = 0.1,
) -> dict:
    """Train on a seeded (1 - holdout) split of a labelled dataset; write the checkpoint; return its meta."""
    from eldistill.data import ImageDataset

    if epochs < 1 or batch < 1 or not 0 < holdout < 1:
        raise ValueError(f"epochs ({epochs}) and batch ({batch}) must be >= 1, holdout ({holdout}) in (0, 1)")
    ds = ImageDataset(dataset)
    if ds.label_dim < 2:
        raise ValueError(f"{dataset}: the classifier needs class labels (dataset.json 'labels' with >= 2 classes)")
    images, labels = ds.load_all(), ds.labels
    empty = sorted(set(range(ds.label_dim)) - set(labels.tolist()))
    if empty:  # a stray index (e.g. 500 among digits 0-9) would add hundreds of classes that no image has
        shown = ", ".join(map(str, empty[:5])) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise ValueError(
            f"{dataset}: dataset.json labels go up to {ds.label_dim - 1} but classes {shown} have no image; "
            f"class indices must be 0..K-1"
        )
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=gen)
    num_test = max(1, round(holdout * len(images)))
    test_idx, train_idx = order[:num_test], order[num_test:]
    torch.manual_seed(seed)
    model = MiniClassifier(ds.channels, ds.resolution, ds.label_dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = -(-len(train_idx) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    bar = tqdm(total=epochs * steps_per_epoch, desc="train-classifier", unit="step")
    for _epoch in range(epochs):
        model.train()
        perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for i in range(0, len(perm), batch):
            idx = perm[i : i + batch]
            x = _to_unit(images[idx])
            # a random shift of up to 1 pixel: cheap augmentation that helps on tiny datasets
            dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
            x = torch.roll(F.pad(x, (1, 1, 1, 1), value=-1.0), shifts=(dy, dx), dims=(2, 3))[..., 1:-1, 1:-1]
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    meta = {
        "kind": "classifier",
        "test_accuracy": _accuracy(model, images[test_idx], labels[test_idx]),
        "train_accuracy": _accuracy(model, images[train_idx], labels[train_idx]),
        "num_train": len(train_idx),
        "num_test": num_test,
        "dataset": str(dataset),
        "dataset_digest": file_digest(dataset) if Path(dataset).is_file() else None,
        "epochs": epochs,
        "seed": seed,
    }
    model.eval()
    record = {"format": FORMAT, "config": model.config, "state_dict": model.state_dict(), "meta": meta}
    atomic_torch_save(with_digest(record), out)
    return meta


def load_classifier(path: str | Path, map_location: str = "cpu") -> tuple[MiniClassifier, dict]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"classifier checkpoint not found: {path} (make it with `eldistill train-classifier`)")
    try:
        data = load_torch_file(path, map_location, "classifier checkpoint")
    except Exception as e:  # torch raises many types for truncated/foreign files
        raise ValueError(f"{path}: not a readable classifier checkpoint ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not an {FORMAT} checkpoint (made by `eldistill train-classifier`)")
    check_digest(data, str(path))
    model = MiniClassifier(**data["config"])
    model.load_state_dict(data["state_dict"])
    return model.eval(), data["meta"]


class ClassifierFeatures:
    """clean-fid custom feature extractor: float (B, 3, H, W) in [0, 255] -> (B, 64) classifier features."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        self.model, self.meta = load_classifier(path)
        self.device = torch.device(device)
        self.model.to(self.device)
        self.config = self.model.config
        self.dim = self.config["feature_dim"]
        self.id = f"mini-classifier:{file_digest(path)}:test_acc={self.meta['test_accuracy']:.4f}"

    def check_images(self, channels: int, resolution: int) -> None:
        expected = (self.config["in_channels"], self.config["resolution"])
        if (channels, resolution) != expected:
            raise ValueError(
                f"the miniature classifier was trained on {expected[0]}x{expected[1]}^2 images; "
                f"cannot embed {channels}x{resolution}^2 images"
            )

    def _unit(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, torch.float32).round()  # uint8 values; remove clean-fid's ToTensor round-off
        if self.config["in_channels"] == 1:
            x = x.mean(dim=1, keepdim=True)  # the pipeline replicates greyscale to RGB; undo it exactly
        return x / 127.5 - 1

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(self._unit(x))

    @torch.no_grad()
    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, num_classes), for a classifier score (IS with this classifier)."""
        return torch.softmax(self.model(self._unit(x)), dim=1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="labelled dataset (EDM zip/folder) to train on")
    parser.add_argument("--out", required=True, help="classifier checkpoint to write (.pt)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)


def run(args: argparse.Namespace) -> int:
    try:
        meta = train_classifier(args.dataset, args.out, args.epochs, args.seed, args.batch, args.lr)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: held-out accuracy {meta['test_accuracy']:.4f} on {meta['num_test']} images")
    return 0
