"""Service fixtures: a real app over SQLite, a file store and a filesystem broker."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

import migrations
from api.app import create_app
from kegnet_service.settings import Settings
from tests.core.models import TinyCNN, torchscript_bytes

ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdef00"


@pytest.fixture(scope="session")
def tiny_model_bytes() -> bytes:
    torch.manual_seed(0)
    return torchscript_bytes(TinyCNN(), (1, 8, 8))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(
        home=tmp_path / "home", api_keys=f"alice:{ALICE},bob:{BOB}", heartbeat_interval_s=3600
    )
    settings.home.mkdir(parents=True)
    migrations.upgrade(settings.resolved_database_url)
    return settings


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def auth(key: str = ALICE) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def submit(
    client: TestClient,
    model: bytes,
    spec: str | None = '{"input_shape": [1, 8, 8], "preset": "quick"}',
    **kwargs,
):
    files = {"model": ("tiny.pt", io.BytesIO(model), "application/octet-stream")}
    data = {"spec": spec} if spec is not None else {}
    headers = {**auth(), **kwargs.pop("headers", {})}
    return client.post("/v1/jobs", files=files, data=data, headers=headers, **kwargs)
