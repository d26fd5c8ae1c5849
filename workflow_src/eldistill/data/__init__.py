"""Datasets in EDM's zip/folder layout and the offline miniature dataset."""

from eldistill.data.dataset import DatasetError, ImageDataset

__all__ = ["DatasetError", "ImageDataset"]
