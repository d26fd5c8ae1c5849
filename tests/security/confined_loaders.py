"""Entry points the confined child calls with one path (those that need more arguments get them here)."""

from pathlib import Path

from eldistill.checkpoints import convert_teacher as _convert_teacher


def convert_teacher(path: str):
    """What `eldistill convert-teacher IN.pkl OUT.pt` runs."""
    return _convert_teacher(path, Path(path).with_suffix(".converted.pt"))
