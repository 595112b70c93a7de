"""Finding jobs whose worker died, and putting them back in the queue.

A running job's worker touches ``heartbeat_at`` every few seconds.  When a
worker is killed (kill -9, a machine restart) its jobs go quiet; a reaper
round re-queues each job silent for longer than the timeout and sends its
task again.  The conditional UPDATE in ``requeue_job`` makes concurrent
reapers (several API replicas) safe: only one of them wins each job.  A job
that keeps killing its workers fails once ``max_attempts`` is reached.
"""

from __future__ import annotations

import logging

from celery import Celery

from kegnet_service import jobs
from kegnet_service.db import session_scope
from kegnet_service.queue import send_job
from kegnet_service.settings import Settings

log = logging.getLogger("kegnet.reaper")


def reap_once(settings: Settings, celery: Celery) -> list[str]:
    """Re-queue stale running jobs; return their ids."""
    requeued = []
    with session_scope(settings.resolved_database_url) as session:
        stale = jobs.stale_running_jobs(session, timeout_s=settings.heartbeat_timeout_s)
        for job in stale:
            if job.attempts >= settings.max_attempts:
                jobs.finish_job(
                    session,
                    job_id=job.id,
                    status="failed",
                    error_code="worker_lost",
                    error_message=f"the job's worker stopped {job.attempts} times; giving up",
                )
            elif jobs.requeue_job(session, job_id=job.id):
                requeued.append(job.id)
    for job_id in requeued:
        log.warning("re-queued job %s after its worker went silent", job_id)
        try:
            send_job(celery, job_id, settings.queue)
        except Exception:
            # No message went out: make the job stale again so the next round retries.
            with session_scope(settings.resolved_database_url) as session:
                jobs.mark_stale(session, job_id=job_id)
            raise
    return requeued
