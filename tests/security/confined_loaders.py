"""Entry points the confined child calls with one path (those that need more arguments get them here)."""

from pathlib import Path

from eldistill.checkpoints import convert_teacher as _convert_teacher
from eldistill.data import open_dataset


def convert_teacher(path: str):
    """What `eldistill convert-teacher IN.pkl OUT.pt` runs."""
    return _convert_teacher(path, Path(path).with_suffix(".converted.pt"))


def first_dataset_item(path: str):
    """What training reads first from a dataset zip (a latent record for EDM2's latent layout)."""
    return open_dataset(path)[0]
