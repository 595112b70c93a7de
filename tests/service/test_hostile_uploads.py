"""Uploads built to hurt: each fails its own job with a clear code, and the worker carries on."""

from __future__ import annotations

import io

import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

import migrations
from api.app import create_app
from kegnet_core.loading import load_torchscript
from kegnet_core.operators import ForbiddenOperatorError
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


class ReadsFile(nn.Module):
    """Reads a file of the server into its (otherwise useless) output."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stolen = torch.from_file(self.path, False, 64, dtype=torch.uint8)
        return self.fc(x.flatten(1)) + stolen[:3].float() * 0


class Prints(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print("hello from the model", x.shape)
        return x.flatten(1)[:, :3]


class CountsCalls(nn.Module):
    """Benign for its first calls; its state, a buffer written in place, decides when to turn."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(1))
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)  # type: ignore[operator]
        if bool(self.calls > 1000):  # type: ignore[operator]
            waste = torch.ones(200_000_000_000)
            return self.fc(x.flatten(1)) + waste[:3]
        return self.fc(x.flatten(1))


def _custom_op_model() -> bytes:
    library = torch.library.Library("kegnet_test", "DEF")
    library.define("steal(Tensor x) -> Tensor")
    library.impl("steal", lambda x: x, "CPU")

    class UsesCustomOp(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.kegnet_test.steal(x).flatten(1)[:, :3]

    return scripted(UsesCustomOp())


@pytest.mark.parametrize(
    ("make", "operator"),
    [
        (lambda home: ReadsFile("/etc/passwd"), "aten::from_file"),
        (lambda home: ReadsFile(str(home / "kegnet.db")), "aten::from_file"),
        (lambda home: ReadsFile("/proc/self/environ"), "aten::from_file"),
        (lambda home: Prints(), "prim::Print"),
    ],
    ids=["host-file", "service-database", "environ", "prints"],
)
def test_forbidden_operators_are_refused_at_upload(guarded, tiny_model_bytes, make, operator):
    with TestClient(create_app(guarded)) as client:
        response = submit(client, scripted(make(guarded.home)))
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "forbidden_operator" and error["field"] == "model"
        assert operator in error["message"] and "forward" in error["message"]
        assert client.get("/v1/jobs", headers=auth()).json()["total"] == 0
        good = submit(client, tiny_model_bytes).json()["id"]
        outcome = execute_job(good, guarded)
        assert outcome == "succeeded", client.get(f"/v1/jobs/{good}", headers=auth()).json()["error"]


def test_a_custom_operator_is_refused_at_upload(guarded):
    with TestClient(create_app(guarded)) as client:
        response = submit(client, _custom_op_model())
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "forbidden_operator" and "kegnet_test::steal" in error["message"]
    assert "custom operator" in error["message"]


def test_the_worker_checks_again_what_slipped_past_upload(guarded, tmp_path):
    # A model stored without the API's check (an older upload, a bypassed front end)
    # still never runs: the worker's graph walk refuses it before any call.
    for model, words in ((ReadsFile("/etc/passwd"), "aten::from_file"), (CountsCalls(), "own state")):
        path = tmp_path / "model.pt"
        path.write_bytes(scripted(model))
        with pytest.raises(ForbiddenOperatorError, match=words):
            load_torchscript(path)
