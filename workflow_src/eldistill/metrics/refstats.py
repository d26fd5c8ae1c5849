"""`eldistill ref-stats`: reference statistics (mu, sigma) of a dataset under a FID protocol.

Images are read by clean-fid's folder/zip reader (greyscale becomes RGB, as in EDM's dataset tool) with
the legacy_tensorflow mode (no resize outside the network) and fed to the protocol's feature network.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from eldistill.metrics.fid import FeatureStats
from eldistill.metrics.protocols import get_protocol, load_feature_net, save_reference


def reference_stats(
    dataset: str | Path,
    protocol: str,
    out: str | Path,
    feature_net: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 256,
) -> dict:
    """Compute and write `out` (.npz with mu, sigma, protocol, feature_net, num_images, dataset)."""
    from cleanfid.fid import get_folder_features

    from eldistill.data import ImageDataset

    proto = get_protocol(protocol)
    ds = ImageDataset(dataset)  # validates the layout and gives the shape the feature net must accept
    fnet = load_feature_net(proto, feature_net, device)
    fnet.check_images(ds.channels, ds.resolution)
    feats = get_folder_features(
        str(dataset),
        model=fnet,
        num_workers=0,
        batch_size=batch_size,
        device=torch.device(device),
        mode="legacy_tensorflow",
        description=f"ref-stats {Path(dataset).name}",
        verbose=True,
    )
    if len(feats) != len(ds):
        raise ValueError(f"{dataset}: clean-fid read {len(feats)} images but the dataset has {len(ds)}")
    stats = FeatureStats(fnet.dim)
    stats.update(np.asarray(feats))
    mu, sigma = stats.mu_sigma()
    save_reference(out, mu, sigma, proto.name, fnet.id, stats.count, str(dataset))
    return {"out": str(out), "protocol": proto.name, "feature_net": fnet.id, "num_images": stats.count}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="EDM-layout zip or folder")
    parser.add_argument("--protocol", required=True, help="fid50k-tf-inception or mini-classifier")
    parser.add_argument(
        "--feature-net",
        default=None,
        help="mini-classifier: the classifier .pt (required); fid50k-tf-inception: inception-2015-12-05.pt "
        "(default: $ELDISTILL_INCEPTION, ~/.cache/eldistill/, /tmp/)",
    )
    parser.add_argument("--out", required=True, help="reference statistics to write (.npz)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch", type=int, default=256, help="images per feature batch")


def run(args: argparse.Namespace) -> int:
    try:
        info = reference_stats(args.dataset, args.protocol, args.out, args.feature_net, args.device, args.batch)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {info['out']}: {info['num_images']} images, protocol {info['protocol']}, {info['feature_net']}")
    return 0
