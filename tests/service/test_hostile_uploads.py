"""Uploads built to hurt: each fails its own job with a clear code, and the worker carries on."""

from __future__ import annotations

import io

import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

import migrations
from api.app import create_app
from kegnet_core.sandbox import ModelTimeoutError, SandboxLimits, check_model_in_sandbox
from kegnet_service.settings import Settings
from worker.tasks import execute_job

from .conftest import ALICE, auth, submit


class WrongShape(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).sum(1)  # (B,), not (B, classes)


class NotFinite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) * float("inf")


class MemoryHog(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        waste = torch.ones(200_000_000_000)  # 800 GB
        return x.flatten(1)[:, :3] + waste[:3]


class Slow(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = torch.ones(6000, 6000)
        for _ in range(200):
            big = big @ big / 6000.0  # minutes of matrix products on two cores
        return x.flatten(1)[:, :3] + big[0, :3]


class RaisesOnShape(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.size(1) != 3:
            raise ValueError("this model wants 3 channels")
        return x.flatten(1)[:, :3]


def scripted(model: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(model.eval()), buffer)
    return buffer.getvalue()


@pytest.fixture
def guarded(tmp_path) -> Settings:
    settings = Settings(
        home=tmp_path / "home",
        api_keys=f"alice:{ALICE}",
        heartbeat_interval_s=3600,
        sandbox_memory_mb=4096,
        sandbox_timeout_s=20,
    )
    settings.home.mkdir()
    migrations.upgrade(settings.resolved_database_url)
    return settings


@pytest.mark.parametrize(
    ("model", "code", "words"),
    [
        (WrongShape(), "model_run_failed", "(batch, classes)"),
        (NotFinite(), "model_run_failed", "non-finite"),
        (MemoryHog(), "model_out_of_memory", "memory"),
        (Slow(), "model_timeout", "took over 20 s"),
        (RaisesOnShape(), "model_run_failed", "wants 3 channels"),
    ],
    ids=["wrong-shape", "not-finite", "memory-hog", "slow", "raises"],
)
def test_hostile_model_fails_its_job_and_the_next_job_runs(guarded, tiny_model_bytes, model, code, words):
    with TestClient(create_app(guarded)) as client:
        bad = submit(client, scripted(model)).json()["id"]
        good = submit(client, tiny_model_bytes).json()["id"]
        assert execute_job(bad, guarded) == "failed"
        job = client.get(f"/v1/jobs/{bad}", headers=auth()).json()
        assert job["error"]["code"] == code, job["error"]
        assert words in job["error"]["message"]
        assert execute_job(good, guarded) == "succeeded"


def test_the_sandbox_times_out_a_slow_model(tmp_path):
    path = tmp_path / "slow.pt"
    path.write_bytes(scripted(Slow()))
    with pytest.raises(ModelTimeoutError):
        check_model_in_sandbox(str(path), (1, 8, 8), SandboxLimits(wall_seconds=5, cpu_seconds=60))
