"""Datasets in EDM's zip/folder layout, EDM2's latent datasets and the offline miniature dataset."""

from eldistill.data.dataset import DatasetError, ImageDataset
from eldistill.data.latents import LatentDataset, open_dataset
from eldistill.data.miniature import make_dataset

__all__ = ["DatasetError", "ImageDataset", "LatentDataset", "make_dataset", "open_dataset"]
