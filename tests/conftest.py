"""Shared fixtures: tiny TorchScript models and the optional ../shared material."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parent.parent


def in_ci() -> bool:
    """CI sets ``CI=true``: there a test tier that cannot run fails the run instead of skipping."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing_service(reason: str) -> NoReturn:
    """Skip a test whose server or browser is missing, or fail it in CI (where all must be there)."""
    if in_ci():
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def shared_dir() -> Path:
    """``$KEGNET_SHARED``, else ``../shared`` beside the repository."""
    return Path(os.environ.get("KEGNET_SHARED", REPO.parent / "shared"))


@pytest.fixture
def shared() -> Path:
    path = shared_dir()
    if not (path / "teachers" / "kegnet").is_dir():
        pytest.skip(f"shared material not found at {path} (set KEGNET_SHARED)")
    return path


@pytest.fixture
def tiny_cnn(tmp_path: Path) -> Path:
    """A small BatchNorm + residual CNN (1x8x8 inputs, 3 classes) saved as TorchScript."""
    import torch

    from tests.core.models import TinyCNN, torchscript_bytes

    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    path.write_bytes(torchscript_bytes(TinyCNN(), (1, 8, 8)))
    return path
