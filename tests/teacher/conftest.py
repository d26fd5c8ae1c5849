"""Fixtures for the teacher tests: a small real-digits dataset written once per session."""

from __future__ import annotations

import pytest

from eldistill.data.miniature import make_dataset


@pytest.fixture(scope="session")
def digits8(tmp_path_factory):
    """sklearn digits at their native 8x8, 600 images, labels kept."""
    return make_dataset("digits", tmp_path_factory.mktemp("data") / "digits8.zip", resolution=8, max_images=600)
