"""Datasets in EDM's zip/folder layout and the offline miniature dataset."""

from eldistill.data.dataset import DatasetError, ImageDataset
from eldistill.data.miniature import make_dataset

__all__ = ["DatasetError", "ImageDataset", "make_dataset"]
