"""The Celery app both sides share; the API sends tasks by name only.

Jobs last hours: the broker's visibility timeout is set past the job time
limit so Redis never hands a running job to a second worker, ``acks_late``
with ``reject_on_worker_lost`` puts a job back when its worker dies, and
``prefetch_multiplier=1`` keeps each worker (one per GPU) to one job at a time.
The job row, not Celery's result backend, records what happened.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from kegnet_service.settings import Settings

RUN_JOB = "kegnet.run_job"
REAP = "kegnet.reap_stale_jobs"


def ensure_broker_folders(settings: Settings) -> None:
    """The filesystem broker's folders must exist before anyone sends or reads."""
    if settings.uses_filesystem_broker:
        for sub in ("queue", "processed", "control"):
            (settings.broker_folder / sub).mkdir(parents=True, exist_ok=True)


def broker_options(settings: Settings) -> dict[str, Any]:
    if settings.uses_filesystem_broker:
        folder = settings.broker_folder
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    # Longer than any job may run, so a message is not redelivered mid-job.
    return {
        "visibility_timeout": settings.job_time_limit_s + 3600,
        "socket_connect_timeout": 3,
        "socket_timeout": 10,
    }


def make_celery(settings: Settings) -> Celery:
    app = Celery("kegnet", broker=settings.resolved_broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue,
        task_ignore_result=True,
        task_time_limit=settings.job_time_limit_s + 600,  # hard stop; the job's own limit comes first
        broker_transport_options=broker_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


def send_job(app: Celery, job_id: str, queue: str) -> None:
    """Enqueue a job by task name (the API never imports worker code)."""
    app.send_task(RUN_JOB, args=[job_id], queue=queue, retry=False)


def ping_broker(app: Celery) -> None:
    """Raise if the broker cannot be reached within a few seconds."""
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=3)
