"""A passing outage of the store or the database is retried; a lasting one hands the job back."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from kegnet_service import jobs
from kegnet_service.db import session_scope
from kegnet_service.retry import is_transient, with_retries
from kegnet_service.storage import LocalStore, ObjectMissing, StoreError, StoreRefused
from worker.tasks import execute_job

from .conftest import auth, submit


def test_transient_errors_are_retried_with_growing_pauses():
    calls: list[int] = []
    pauses: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise StoreError("connection reset")
        return "done"

    assert with_retries(flaky, what="a test", sleep=pauses.append) == "done"
    assert len(calls) == 3 and pauses == [0.5, 1.0]


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (StoreError("timeout"), True),
        (ObjectMissing("jobs/x/teacher.pt"), False),
        (OperationalError("SELECT 1", {}, Exception("server closed the connection")), True),
        (IntegrityError("INSERT", {}, Exception("duplicate key")), False),
        (ValueError("a bug"), False),
    ],
)
def test_what_counts_as_transient(error, transient):
    assert is_transient(error) is transient
    calls = []

    def failing() -> None:
        calls.append(1)
        raise error

    with pytest.raises(type(error)):
        with_retries(failing, what="a test", attempts=3, sleep=lambda _s: None)
    assert len(calls) == (3 if transient else 1)


class FlakyStore(LocalStore):
    """A local store whose reads fail ``failures`` times before working."""

    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(root)
        self.failures = failures

    def get_file(self, key: str, path: Path) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise StoreError("the store is restarting")
        super().get_file(key, path)


def test_a_store_outage_puts_the_job_back_instead_of_failing_it(
    client, settings, tiny_model_bytes, monkeypatch
):
    import worker.tasks as tasks

    job_id = submit(client, tiny_model_bytes).json()["id"]
    monkeypatch.setattr("kegnet_service.retry.time.sleep", lambda _s: None)
    down = FlakyStore(settings.home / "store", failures=100)
    monkeypatch.setattr(tasks, "_store", lambda _settings: down)
    assert execute_job(job_id, settings) == "requeued"
    job = client.get(f"/v1/jobs/{job_id}", headers=auth()).json()
    assert job["status"] == "queued" and job["attempts"] == 1
    # The outage passes (a blip of two failed reads): the job runs.
    monkeypatch.setattr(tasks, "_store", lambda _settings: FlakyStore(settings.home / "store", failures=2))
    assert execute_job(job_id, settings) == "succeeded"
    with session_scope(settings.resolved_database_url) as session:
        row = jobs.get_job(session, job_id=job_id)
        assert row is not None and row.attempts == 2


class ResultsRefused(LocalStore):
    """A local store whose every upload of a job's results fails with ``error`` (reads work)."""

    def __init__(self, root: Path, error: StoreError) -> None:
        super().__init__(root)
        self.error = error

    def put_file(self, key: str, path: Path) -> None:
        if "/out/" in key:
            raise self.error
        super().put_file(key, path)


def test_a_store_outage_while_storing_the_results_hands_the_job_back(
    client, settings, tiny_model_bytes, monkeypatch
):
    import worker.tasks as tasks

    job_id = submit(client, tiny_model_bytes).json()["id"]
    monkeypatch.setattr("kegnet_service.retry.time.sleep", lambda _s: None)
    monkeypatch.setattr(
        tasks,
        "_store",
        lambda _settings: ResultsRefused(settings.home / "store", StoreError("the store is restarting")),
    )
    assert execute_job(job_id, settings) == "requeued"  # it was a failed job with store_error
    job = client.get(f"/v1/jobs/{job_id}", headers=auth()).json()
    assert job["status"] == "queued" and job["error"] is None and job["attempts"] == 1
    monkeypatch.setattr(tasks, "_store", lambda _settings: LocalStore(settings.home / "store"))
    assert execute_job(job_id, settings) == "succeeded"
    assert client.get(f"/v1/jobs/{job_id}/model", headers=auth()).status_code == 200


@pytest.mark.parametrize(
    ("status", "code", "transient"),
    [
        (403, "AccessDenied", False),
        (404, "NoSuchBucket", False),
        (400, "RequestTimeout", True),
        (429, "TooManyRequests", True),
        (503, "SlowDown", True),
        (500, "InternalError", True),
    ],
)
def test_a_store_that_refuses_is_not_an_outage(status, code, transient):
    from botocore.exceptions import ClientError

    from kegnet_service.storage import S3Store

    class Refusing:
        def put_object(self, **_kwargs):
            raise ClientError(
                {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
            )

    store = S3Store("bucket", "prefix", endpoint_url="http://127.0.0.1:9", region="us-east-1")
    store.client = Refusing()
    with pytest.raises(StoreError) as raised:
        store._call("put_object", Bucket="bucket", Key="prefix/x")
    assert is_transient(raised.value) is transient


def test_a_store_that_refuses_the_results_fails_the_job_at_once(
    client, settings, tiny_model_bytes, monkeypatch
):
    import worker.tasks as tasks

    job_id = submit(client, tiny_model_bytes).json()["id"]
    monkeypatch.setattr(
        tasks,
        "_store",
        lambda _settings: ResultsRefused(  # as S3 denies a key without rights
            settings.home / "store", StoreRefused("S3 upload_file was refused: AccessDenied")
        ),
    )
    assert execute_job(job_id, settings) == "failed"
    job = client.get(f"/v1/jobs/{job_id}", headers=auth()).json()
    assert job["error"]["code"] == "store_error" and "AccessDenied" in job["error"]["message"]


def test_an_end_recorded_but_unacknowledged_is_recognised_when_retried(client, settings, tiny_model_bytes):
    job_id = submit(client, tiny_model_bytes).json()["id"]
    with session_scope(settings.resolved_database_url) as session:
        assert jobs.claim_job(session, job_id=job_id, worker="w1", max_attempts=3) is not None
    end = {"job_id": job_id, "status": "succeeded", "artifacts": [], "output_prefix": f"jobs/{job_id}/out/1"}
    for _ in range(2):  # the second is the retry after a commit whose answer was lost
        with session_scope(settings.resolved_database_url) as session:
            assert jobs.finish_job(session, worker="w1", **end)
    with session_scope(settings.resolved_database_url) as session:
        assert not jobs.finish_job(session, worker="w2", **end)
        assert not jobs.finish_job(session, worker="w1", **{**end, "output_prefix": f"jobs/{job_id}/out/2"})
