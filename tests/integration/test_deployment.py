"""The scaled-out path on real servers: Postgres, Redis, SeaweedFS S3, separate processes."""

from __future__ import annotations

import io
import itertools
import time
from pathlib import Path

import psycopg
import pytest
import torch

import migrations
from tests.core.models import TinyCNN, torchscript_bytes

from .conftest import BUCKET, Deployment, S3Server, create_database, drop_database

pytestmark = pytest.mark.integration

QUICK = '{"input_shape": [1, 8, 8], "preset": "quick"}'


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    torch.manual_seed(0)
    return torchscript_bytes(TinyCNN(), (1, 8, 8))


def submit(deployment: Deployment, model: bytes, spec: str = QUICK) -> str:
    with deployment.client() as client:
        response = client.post(
            "/v1/jobs", files={"model": ("tiny.pt", io.BytesIO(model))}, data={"spec": spec}
        )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def wait_for(deployment: Deployment, job_id: str, statuses: tuple[str, ...], timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    with deployment.client() as client:
        while time.monotonic() < deadline:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in statuses:
                return job
            time.sleep(0.5)
    logs = "\n".join(
        deployment.log(name)[-3000:] for name in ("api", *[f"worker-{w}" for w in deployment.workers])
    )
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s\n{logs}")


def test_a_job_on_postgres_redis_and_s3(deployment: Deployment, s3_server: S3Server, model_bytes, tmp_path):
    deployment.start_api()
    deployment.start_worker("w1")
    job_id = submit(deployment, model_bytes)
    job = wait_for(deployment, job_id, ("succeeded", "failed"))
    assert job["status"] == "succeeded", job["error"]

    with deployment.client() as client:
        response = client.get(f"/v1/jobs/{job_id}/model", follow_redirects=False)
        assert response.status_code == 200
        path = tmp_path / "student.pt"
        path.write_bytes(response.content)
    student = torch.jit.load(str(path))
    assert student(torch.randn(4, 1, 8, 8)).shape == (4, 3)

    with psycopg.connect(deployment.env["KEGNET_DATABASE_URL"]) as connection:
        row = connection.execute(
            "SELECT status, attempts, report FROM jobs WHERE id = %s", (job_id,)
        ).fetchone()
    assert row is not None
    status, attempts, report = row
    assert (status, attempts) == ("succeeded", 1)
    assert report["compression_ratio"] > 1

    prefix = deployment.env["KEGNET_STORAGE_URL"].split(f"{BUCKET}/", 1)[1]
    listed = s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/jobs/{job_id}/")
    keys = {item["Key"].rsplit("/", 1)[1] for item in listed["Contents"]}
    assert {"teacher.pt", "student.pt", "report.json", "samples.png"} <= keys
    assert "generators.zip" not in keys  # BatchNorm: auto synthesised inputs, trained no generators


def test_two_workers_drain_a_queue_in_parallel(deployment: Deployment, model_bytes):
    deployment.start_api()
    deployment.start_worker("w1")
    deployment.start_worker("w2")
    job_ids = [submit(deployment, model_bytes) for _ in range(4)]
    finished = [wait_for(deployment, job_id, ("succeeded", "failed"), timeout=400) for job_id in job_ids]
    assert [job["status"] for job in finished] == ["succeeded"] * 4
    with psycopg.connect(deployment.env["KEGNET_DATABASE_URL"]) as connection:
        rows = connection.execute(
            "SELECT worker, attempts, started_at, finished_at FROM jobs WHERE id = ANY(%s)", (job_ids,)
        ).fetchall()
    assert all(attempts == 1 for _, attempts, _, _ in rows)  # none ran twice
    workers = {worker.split("@", 1)[0] for worker, _, _, _ in rows}
    assert workers == {"w1", "w2"}
    spans = sorted((started, finished) for _, _, started, finished in rows)
    overlapping = any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))
    assert overlapping, "the two workers never ran jobs at the same time"


def test_migrations_upgrade_downgrade_upgrade_on_postgres(postgres_admin: str):
    url = create_database(postgres_admin)
    try:

        def tables() -> set[str]:
            with psycopg.connect(url) as connection:
                rows = connection.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                ).fetchall()
            return {name for (name,) in rows}

        migrations.upgrade(url)
        assert {"jobs", "api_keys", "alembic_version"} <= tables()
        assert migrations.current(url) is not None
        migrations.downgrade(url, "base")
        assert tables() <= {"alembic_version"}
        migrations.upgrade(url)
        assert {"jobs", "api_keys"} <= tables()
    finally:
        drop_database(postgres_admin, url)


def test_jobs_of_the_first_schema_survive_the_upgrade_and_sizes_pass_2_gib(postgres_admin: str):
    from kegnet_service import jobs
    from kegnet_service.db import session_scope

    url = create_database(postgres_admin)
    try:
        migrations.upgrade(url, "0001")
        with psycopg.connect(url) as connection:
            connection.execute(
                "INSERT INTO jobs (id, owner, status, spec, model_name, model_size, artifacts,"
                " created_at, updated_at) VALUES ('old', 'alice', 'succeeded', '{}', 'm.pt', 123,"
                " '[\"student.pt\"]', now(), now())"
            )
        migrations.upgrade(url)
        with session_scope(url) as session:
            old = jobs.get_job(session, job_id="old")
            assert old is not None and old.model_size == 123 and old.artifacts == ["student.pt"]
            # Its results stay where that release put them.
            assert jobs.artifact_key(old.id, "student.pt", old.output_prefix) == "jobs/old/out/student.pt"
            jobs.create_job(
                session, job_id="big", owner="alice", spec={}, model_name="big.pt", model_size=3 * 2**30
            )
        with session_scope(url) as session:
            big = jobs.get_job(session, job_id="big")
            assert big is not None and big.model_size == 3 * 2**30  # an INTEGER column refused it
    finally:
        drop_database(postgres_admin, url)


def test_the_schema_matches_the_models(postgres_admin: str):
    """Autogenerate finds nothing to change: models and migrations agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    from kegnet_service.models import Base

    url = create_database(postgres_admin)
    try:
        migrations.upgrade(url)
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        engine.dispose()
        assert diff == []
    finally:
        drop_database(postgres_admin, url)


def test_prestart_waits_for_the_database(deployment: Deployment, tmp_path: Path):
    env = {**deployment.env, "KEGNET_DATABASE_URL": "postgresql://postgres@127.0.0.1:9/none"}
    started = time.monotonic()
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "kegnet_cli.main", "migrate", "--wait", "2"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "did not answer within 2 s" in result.stderr
    assert time.monotonic() - started >= 2
