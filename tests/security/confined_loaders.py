"""Entry points the confined child calls with one path (those that need more arguments get them here)."""

from pathlib import Path

from eldistill.checkpoints import convert_teacher as _convert_teacher
from eldistill.data import open_dataset
from eldistill.distillers import lpips
from eldistill.statefile import read_state
from eldistill.train import STATE_FORMAT


def convert_teacher(path: str):
    """What `eldistill convert-teacher IN.pkl OUT.pt` runs."""
    return _convert_teacher(path, Path(path).with_suffix(".converted.pt"))


def first_dataset_item(path: str):
    """What training reads first from a dataset zip (a latent record for EDM2's latent layout)."""
    return open_dataset(path)[0]


def read_training_state(path: str):
    """What `eldistill train` and `train-teacher` resume from (statefile.read_state)."""
    return read_state(path, STATE_FORMAT)


def lpips_weights(path: str):
    """How LPIPS reads its downloaded VGG16 and linear-head weights."""
    return lpips._load(Path(path))
