"""Faults on the real deployment path: a worker killed mid-job, Redis stopped during a
submission, a cancel mid-stage.  Postgres + Redis + S3 + separate worker processes."""

from __future__ import annotations

import io
import shutil
import signal
import subprocess
import time
from typing import Any

import psycopg
import pytest
import torch

from tests.core.models import TinyCNN, torchscript_bytes
from tests.serve_process import free_port

from .conftest import BUCKET, Deployment, S3Server, port_open, wait_until
from .test_deployment import submit, wait_for

pytestmark = pytest.mark.integration

# Long enough to be caught mid-stage: the default preset on a tiny model.
LONG = '{"input_shape": [1, 8, 8], "preset": "default"}'


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    torch.manual_seed(0)
    return torchscript_bytes(TinyCNN(), (1, 8, 8))


def wait_for_stage(deployment: Deployment, job_id: str, stage: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    with deployment.client() as client:
        while time.monotonic() < deadline:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["stage"] == stage and job["status"] == "running":
                return job
            assert job["status"] in ("queued", "running"), job
            time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached {stage}")


def test_a_killed_worker_loses_no_job(deployment: Deployment, model_bytes):
    deployment.start_api()
    first = deployment.start_worker("doomed")
    job_id = submit(deployment, model_bytes, LONG)
    wait_for_stage(deployment, job_id, "extracting")
    deployment.kill(first, signal.SIGKILL)  # kill -9 the worker and its pool, mid-job
    deployment.start_worker("rescuer")
    job = wait_for(deployment, job_id, ("succeeded", "failed"), timeout=600)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2
    with psycopg.connect(deployment.env["KEGNET_DATABASE_URL"]) as connection:
        row = connection.execute("SELECT worker FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    (worker,) = row
    assert worker.startswith("rescuer@")


def test_a_job_whose_worker_died_mid_distillation_resumes_from_its_checkpoint(
    deployment: Deployment, s3_server: S3Server, model_bytes
):
    deployment.start_api()
    first = deployment.start_worker("doomed")
    job_id = submit(deployment, model_bytes, LONG)
    prefix = deployment.env["KEGNET_STORAGE_URL"].split(f"{BUCKET}/", 1)[1]
    checkpoint = f"{prefix}/jobs/{job_id}/checkpoint/distillation.pt"
    client = s3_server.client()

    def distillation_saved() -> bool:
        return client.list_objects_v2(Bucket=BUCKET, Prefix=checkpoint).get("KeyCount", 0) > 0

    wait_until(distillation_saved, 300, "a distillation checkpoint in the store")
    deployment.kill(first, signal.SIGKILL)  # kill -9 the worker and its pool, mid-distillation
    deployment.start_worker("rescuer")
    job = wait_for(deployment, job_id, ("succeeded", "failed"), timeout=600)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2
    # The rescuer picked up where the checkpoint left off, not at step 0 ...
    assert job["report"]["history"]["resumed_distillation_at"] > 0
    # ... and the checkpoints are gone once the job has ended.
    assert (
        client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/jobs/{job_id}/checkpoint/").get("KeyCount", 0)
        == 0
    )


def test_cancel_mid_stage_removes_partial_files(deployment: Deployment, s3_server: S3Server, model_bytes):
    deployment.start_api()
    deployment.start_worker("w1")
    job_id = submit(deployment, model_bytes, LONG)
    wait_for_stage(deployment, job_id, "extracting")
    with deployment.client() as client:
        asked = time.monotonic()
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    job = wait_for(deployment, job_id, ("cancelled", "succeeded", "failed"), timeout=60)
    assert job["status"] == "cancelled"
    assert time.monotonic() - asked < 15
    prefix = deployment.env["KEGNET_STORAGE_URL"].split(f"{BUCKET}/", 1)[1]
    listed = s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/jobs/{job_id}/out/")
    assert listed.get("KeyCount", 0) == 0
    # The worker is free again: a quick job after it succeeds.
    quick = submit(deployment, model_bytes)
    assert wait_for(deployment, quick, ("succeeded", "failed"))["status"] == "succeeded"


@pytest.fixture
def private_redis(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]

    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: port_open("127.0.0.1", port), 20, "redis")
        return process

    handle: dict[str, Any] = {"process": start(), "start": start, "port": port}
    yield handle
    handle["process"].terminate()
    handle["process"].wait()


def test_redis_down_during_submission_is_a_clean_503(
    deployment: Deployment, private_redis, s3_server, model_bytes
):
    deployment.env["KEGNET_BROKER_URL"] = f"redis://127.0.0.1:{private_redis['port']}/0"
    deployment.start_api()
    deployment.start_worker("w1")
    private_redis["process"].terminate()
    private_redis["process"].wait()
    with deployment.client() as client:
        response = client.post(
            "/v1/jobs",
            files={"model": ("tiny.pt", io.BytesIO(model_bytes))},
            data={"spec": '{"input_shape": [1, 8, 8], "preset": "quick"}'},
        )
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "broker_unavailable"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["broker"].startswith("unavailable")
        assert ready.json()["checks"]["database"] == "ok" and ready.json()["checks"]["store"] == "ok"
    with psycopg.connect(deployment.env["KEGNET_DATABASE_URL"]) as connection:
        assert connection.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
    prefix = deployment.env["KEGNET_STORAGE_URL"].split(f"{BUCKET}/", 1)[1]
    assert s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/").get("KeyCount", 0) == 0

    private_redis["process"] = private_redis["start"]()  # Redis is back: everything recovers
    wait_until(lambda: deployment._ready(), 60, "the API to see Redis again")
    job_id = submit(deployment, model_bytes)
    assert wait_for(deployment, job_id, ("succeeded", "failed"), timeout=300)["status"] == "succeeded"


def test_database_down_is_a_clean_503(deployment: Deployment, model_bytes):
    deployment.env["KEGNET_DATABASE_URL"] = "postgresql://postgres@127.0.0.1:9/none"
    port = free_port()
    process = deployment._spawn("api-nodb", "api", "--port", str(port), "--loglevel", "WARNING")
    deployment.api_url = f"http://127.0.0.1:{port}"
    wait_until(lambda: port_open("127.0.0.1", port), 60, "the API port")
    with deployment.client() as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith("unavailable")
        response = client.post(
            "/v1/jobs",
            files={"model": ("tiny.pt", io.BytesIO(model_bytes))},
            data={"spec": '{"input_shape": [1, 8, 8], "preset": "quick"}'},
        )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "database_unavailable"
        assert client.get("/healthz").status_code == 200
    deployment.kill(process, signal.SIGTERM)
