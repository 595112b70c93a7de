"""Finding jobs whose worker died or whose message was lost, and sending them again.

A running job's worker touches ``heartbeat_at`` every few seconds.  When a
worker is killed (kill -9, a machine restart) its jobs go quiet; a reaper
round re-queues each job silent for longer than the timeout and sends its
task again.  A job left ``queued`` for long (its message lost with a broker
restart, or a worker that failed to claim it) is sent again too; a message
delivered twice runs the job once (``claim_job`` is conditional).  A job
that keeps killing its workers fails once ``max_attempts`` is reached.

One reaper runs per deployment, on a schedule: :func:`run_forever` is the
``kegnet reaper`` command (its own service in docker-compose) and a thread of
``kegnet serve``.  The conditional UPDATEs keep a second one harmless.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery

from kegnet_service import jobs
from kegnet_service.db import session_scope
from kegnet_service.queue import send_job
from kegnet_service.settings import Settings
from kegnet_service.storage import settings_store

log = logging.getLogger("kegnet.reaper")
ALIVE_FILE = "reaper.alive"


def reap_once(settings: Settings, celery: Celery) -> list[str]:
    """Re-queue stale running jobs and re-send long-queued ones; return their ids."""
    requeued, given_up = [], []
    with session_scope(settings.resolved_database_url) as session:
        stale = jobs.stale_running_jobs(session, timeout_s=settings.heartbeat_timeout_s)
        for job in stale:
            if job.attempts >= settings.max_attempts:
                if jobs.finish_job(
                    session,
                    job_id=job.id,
                    status="failed",
                    error_code="worker_lost",
                    error_message=f"the job's worker stopped {job.attempts} times; giving up",
                ):
                    given_up.append(job.id)
            elif jobs.requeue_job(session, job_id=job.id):
                requeued.append(job.id)
        lost = jobs.stale_queued_jobs(session, older_than_s=settings.queued_resend_s)
    if given_up:
        _discard(settings, given_up)
    for job_id in lost:
        log.warning(
            "sending queued job %s again: no worker took it for %.0f s", job_id, settings.queued_resend_s
        )
        send_job(celery, job_id, settings.queue)
    for job_id in requeued:
        log.warning("re-queued job %s after its worker went silent", job_id)
        try:
            send_job(celery, job_id, settings.queue)
        except Exception:
            # No message went out: make the job stale again so the next round retries.
            with session_scope(settings.resolved_database_url) as session:
                jobs.mark_stale(session, job_id=job_id)
            raise
    return requeued + lost


def _discard(settings: Settings, job_ids: list[str]) -> None:
    """Delete the checkpoints and partial results of jobs given up on, as far as the store lets
    us (their workers died; none of them will)."""
    try:
        store = settings_store(settings)
    except Exception:
        log.warning("could not open the store to delete the files of jobs %s", job_ids, exc_info=True)
        return
    for job_id in job_ids:
        try:
            jobs.discard_files(store, job_id=job_id)
        except Exception:
            log.warning("could not delete the files of job %s, given up on", job_id, exc_info=True)


def run_forever(settings: Settings, celery: Celery, stop: threading.Event | None = None) -> None:
    """A reaper round every ``reap_interval_s`` until ``stop`` is set; a failed round (database or
    broker down) is logged and the next one tries again."""
    stop = stop or threading.Event()
    alive = settings.home / ALIVE_FILE
    while not stop.wait(settings.reap_interval_s):
        try:
            reap_once(settings, celery)
            alive.parent.mkdir(parents=True, exist_ok=True)
            alive.touch()  # the compose healthcheck reads its age
        except Exception:
            log.warning("reaper round failed; retrying in %.0f s", settings.reap_interval_s, exc_info=True)
