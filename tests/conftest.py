"""Shared fixtures: tiny TorchScript models and the optional ../shared material."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """``$KEGNET_SHARED``, else ``../shared`` beside the repository."""
    return Path(os.environ.get("KEGNET_SHARED", REPO.parent / "shared"))


@pytest.fixture
def shared() -> Path:
    path = shared_dir()
    if not (path / "teachers" / "kegnet").is_dir():
        pytest.skip(f"shared material not found at {path} (set KEGNET_SHARED)")
    return path
