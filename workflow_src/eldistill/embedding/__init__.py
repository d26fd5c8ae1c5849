"""The Embedding Loss (EL): squared MMD with a multi-scale RBF kernel in the features of an ensemble of
frozen, randomly initialised networks. Knows nothing of distillers or teachers."""

from .embedders import FAMILIES, build_embedder
from .loss import EmbeddingLoss
from .mmd import NonFiniteInputError, median_distance, mmd2

__all__ = ["FAMILIES", "EmbeddingLoss", "NonFiniteInputError", "build_embedder", "median_distance", "mmd2"]
