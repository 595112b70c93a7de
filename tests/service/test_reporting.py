"""The worker's progress reporter: throttled writes, previews, cancel and time limit."""

from __future__ import annotations

import pytest

from kegnet_core.errors import Cancelled, TimeLimitError
from kegnet_core.progress import ProgressEvent
from kegnet_service import jobs
from kegnet_service.db import session_scope
from worker.reporting import JobReporter

from .conftest import submit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def running_job(client, settings, tiny_model_bytes) -> str:
    job_id = submit(client, tiny_model_bytes).json()["id"]
    with session_scope(settings.resolved_database_url) as session:
        assert jobs.claim_job(session, job_id=job_id, worker="test", max_attempts=3) is not None
    return job_id


def _job(settings, job_id):
    with session_scope(settings.resolved_database_url) as session:
        return jobs.get_job(session, job_id=job_id)


def test_writes_are_throttled_but_stages_and_metrics_always_land(settings, running_job):
    clock = Clock()
    previews: list[bytes] = []
    reporter = JobReporter(
        database_url=settings.resolved_database_url,
        job_id=running_job,
        task="compress",
        time_limit_s=100,
        interval_s=1.0,
        clock=clock,
        save_preview=previews.append,
        preview_interval_s=5.0,
    )
    reporter(ProgressEvent("extracting", 1, 100))
    assert _job(settings, running_job).stage == "extracting"
    clock.now = 0.5
    reporter(ProgressEvent("extracting", 50, 100))  # throttled: not written
    assert _job(settings, running_job).progress == jobs.overall_progress("compress", "extracting", 0.01)
    clock.now = 1.6
    reporter(ProgressEvent("extracting", 60, 100, {"loss": 0.5}, preview=b"png1"))
    job = _job(settings, running_job)
    assert job.progress == jobs.overall_progress("compress", "extracting", 0.6)
    assert job.metrics["curves"]["extracting"] == [{"step": 60, "loss": 0.5}]
    assert previews == [b"png1"] and job.metrics["preview_version"] == 1
    clock.now = 2.0
    reporter(ProgressEvent("extracting", 70, 100, {"loss": 0.4}, preview=b"png2"))  # preview too soon
    assert previews == [b"png1"]


def test_cancel_and_time_limit(settings, running_job):
    clock = Clock()
    reporter = JobReporter(
        database_url=settings.resolved_database_url,
        job_id=running_job,
        task="compress",
        time_limit_s=10,
        interval_s=1.0,
        clock=clock,
    )
    reporter(ProgressEvent("distilling", 1, 10))
    with session_scope(settings.resolved_database_url) as session:
        job = jobs.get_job(session, job_id=running_job)
        assert job is not None
        jobs.request_cancel(session, job=job)
    clock.now = 2.0
    with pytest.raises(Cancelled):
        reporter(ProgressEvent("distilling", 2, 10))
    clock.now = 11.0
    with pytest.raises(TimeLimitError):
        reporter(ProgressEvent("distilling", 3, 10))


def test_a_budgets_estimate_lands_on_the_row_at_once(settings, running_job):
    clock = Clock()
    reporter = JobReporter(
        database_url=settings.resolved_database_url,
        job_id=running_job,
        task="compress",
        time_limit_s=100,
        interval_s=10.0,
        clock=clock,
    )
    reporter(ProgressEvent("validating", 0, 1))
    clock.now = 0.5  # well inside the throttle, and no metrics: written for the estimate
    reporter(ProgressEvent("validating", 1, 1, estimate_s=42.5))
    assert _job(settings, running_job).metrics["estimate_s"] == 42.5
    clock.now = 20.0
    reporter(ProgressEvent("extracting", 5, 10))
    assert _job(settings, running_job).metrics["estimate_s"] == 42.5  # kept on later writes
