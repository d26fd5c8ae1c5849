"""FID under two named protocols: the paper's (TF-Inception, 50k samples, published reference statistics)
and the miniature's (a small classifier trained on the miniature data; never comparable with the paper)."""

from eldistill.metrics.fid import FeatureStats, frechet_distance
from eldistill.metrics.protocols import MINI, PAPER, PROTOCOLS, get_protocol, load_reference, save_reference

__all__ = [
    "MINI",
    "PAPER",
    "PROTOCOLS",
    "FeatureStats",
    "frechet_distance",
    "get_protocol",
    "load_reference",
    "save_reference",
]
