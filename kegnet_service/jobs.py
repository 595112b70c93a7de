"""Keyword-only functions over the job table: the one place jobs change state.

The job row is the source of truth for status, stage and progress; the
worker and the API both go through these functions, and every state change
is a conditional UPDATE, so a cancelled job is never resurrected and a
finished job is never run twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from kegnet_service.models import Job
from kegnet_service.states import TERMINAL_STATUSES
from kegnet_service.storage import ModelStore

# Where each stage sits in the job's overall progress (start, end).
STAGE_SPANS = {
    "compress": {
        "validating": (0.0, 0.02),
        "extracting": (0.02, 0.55),
        "compressing": (0.55, 0.57),
        "distilling": (0.57, 0.95),
        "exporting": (0.95, 1.0),
    },
    "extract": {"validating": (0.0, 0.02), "extracting": (0.02, 0.95), "exporting": (0.95, 1.0)},
    "quantize": {"validating": (0.0, 0.02), "extracting": (0.02, 0.85), "exporting": (0.85, 1.0)},
}


def now() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return uuid.uuid4().hex


def model_key(job_id: str) -> str:
    return f"jobs/{job_id}/teacher.pt"


def outputs_prefix(job_id: str) -> str:
    """Where every attempt of a job keeps its results."""
    return f"jobs/{job_id}/out"


def attempt_prefix(job_id: str, attempt: int) -> str:
    """Where one attempt uploads its results: a worker that lost its job (it went silent, the
    job was re-queued and claimed again) may still be uploading, and must not write over the
    files of the attempt that holds the job now.  The job row names the one that succeeded."""
    return f"{outputs_prefix(job_id)}/{attempt}"


def artifact_key(job_id: str, name: str, prefix: str | None = None) -> str:
    """The key of a succeeded job's result ``name`` under its ``output_prefix`` (jobs that
    ended before attempts had their own prefixes have none: their results are in ``out``)."""
    return f"{prefix or outputs_prefix(job_id)}/{name}"


def checkpoint_prefix(job_id: str) -> str:
    """Where a job's checkpoints live between attempts (kept until it ends)."""
    return f"jobs/{job_id}/checkpoint"


def preview_key(job_id: str) -> str:
    return f"jobs/{job_id}/live/samples.png"


def discard_files(store: ModelStore, *, job_id: str, keep: str | None = None) -> None:
    """Delete what an ended job no longer needs: its checkpoints and every attempt's results
    but those under ``keep`` (the prefix a succeeded job serves).  Raises ``StoreError``."""
    store.delete_prefix(checkpoint_prefix(job_id))
    outputs = outputs_prefix(job_id)
    if keep is None:
        store.delete_prefix(outputs)
        return
    folders = {key[len(outputs) + 1 :].split("/", 1)[0] for key in store.list_keys(outputs)}
    for folder in sorted(folders):
        # Attempts' folders are numbers; files of jobs from before them sit in ``out`` itself.
        if folder.isdigit() and f"{outputs}/{folder}" != keep:
            store.delete_prefix(f"{outputs}/{folder}")


def overall_progress(task: str, stage: str, fraction: float) -> float:
    """The job's progress in [0, 1] from its stage and the stage's own fraction."""
    spans = STAGE_SPANS.get(task, STAGE_SPANS["compress"])
    start, end = spans.get(stage, (0.0, 1.0))
    return round(start + (end - start) * min(max(fraction, 0.0), 1.0), 4)


def create_job(
    session: Session,
    *,
    job_id: str,
    owner: str,
    spec: dict[str, Any],
    model_name: str,
    model_size: int,
    idempotency_key: str | None = None,
) -> Job:
    stamp = now()
    job = Job(
        id=job_id,
        owner=owner,
        status="queued",
        stage=None,
        progress=0.0,
        spec=spec,
        model_name=model_name,
        model_size=model_size,
        cancel_requested=False,
        attempts=0,
        idempotency_key=idempotency_key,
        created_at=stamp,
        updated_at=stamp,
    )
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, *, job_id: str, owner: str | None = None) -> Job | None:
    """The job, or None when it does not exist or belongs to someone else."""
    job = session.get(Job, job_id)
    if job is None or (owner is not None and job.owner != owner):
        return None
    return job


def find_by_idempotency_key(session: Session, *, owner: str, key: str) -> Job | None:
    return session.scalars(select(Job).where(Job.owner == owner, Job.idempotency_key == key)).first()


def list_jobs(
    session: Session,
    *,
    owner: str | None,
    statuses: Sequence[str] = (),
    limit: int = 20,
    offset: int = 0,
) -> tuple[list[Job], int]:
    """Newest first, with the total count for pagination."""
    query = select(Job)
    if owner is not None:
        query = query.where(Job.owner == owner)
    if statuses:
        query = query.where(Job.status.in_(statuses))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset))
    return list(rows), int(total)


def request_cancel(session: Session, *, job: Job) -> Job:
    """Cancel a queued job now; ask a running one to stop at its next step."""
    stamp = now()
    # Tried in this order whatever ``job.status`` said when it was read: a worker may claim the
    # job in between, and then the cancel must reach the running job, not be lost.
    done = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=stamp, updated_at=stamp)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == "running")
            .values(cancel_requested=True, updated_at=stamp)
        )
    session.flush()
    session.refresh(job)
    return job


def claim_job(session: Session, *, job_id: str, worker: str, max_attempts: int) -> Job | None:
    """Mark a queued job running for ``worker``; None when it is not claimable.

    A job already running under a live heartbeat, or finished, or cancelled,
    is left alone: that is what keeps a redelivered message from running a
    job twice.
    """
    stamp = now()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(False))
        .values(
            status="running",
            stage="validating",
            worker=worker,
            attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, stamp),
            heartbeat_at=stamp,
            updated_at=stamp,
            error_code=None,
            error_message=None,
        )
    )
    session.flush()
    if result.rowcount != 1:  # type: ignore[attr-defined]
        # Queued with a cancel asked (its worker died after the cancel): end it here.
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(True))
            .values(status="cancelled", finished_at=stamp, updated_at=stamp)
        )
        return None
    job = session.get(Job, job_id)
    assert job is not None
    session.refresh(job)
    if job.attempts > max_attempts:
        finish_job(
            session,
            job_id=job_id,
            status="failed",
            error_code="too_many_attempts",
            error_message=(
                f"the job was handed back {max_attempts} times (its worker stopped, or the store"
                " stayed unreachable); giving up"
            ),
        )
        return None
    return job


def record_progress(
    session: Session,
    *,
    job_id: str,
    stage: str,
    progress: float,
    metrics: dict[str, Any] | None = None,
    worker: str | None = None,
) -> bool:
    """Update a running job's stage, progress and heartbeat; return whether cancel was asked."""
    stamp = now()
    values: dict[str, Any] = {
        "stage": stage,
        "progress": progress,
        "heartbeat_at": stamp,
        "updated_at": stamp,
    }
    if metrics is not None:
        values["metrics"] = metrics
    session.execute(update(Job).where(*_held(job_id, worker)).values(**values))
    cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return bool(cancel)


def _held(job_id: str, worker: str | None) -> tuple[Any, ...]:
    """Conditions for a running job's row, held by ``worker`` where one is named: a worker whose
    job was re-queued and claimed by another must not write over that one's run."""
    conditions = (Job.id == job_id, Job.status == "running")
    return (*conditions, Job.worker == worker) if worker is not None else conditions


def beat(session: Session, *, job_id: str, worker: str | None = None) -> bool:
    """Touch a running job's heartbeat; return whether a cancel was asked."""
    stamp = now()
    session.execute(update(Job).where(*_held(job_id, worker)).values(heartbeat_at=stamp))
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def finish_job(
    session: Session,
    *,
    job_id: str,
    status: str,
    report: dict[str, Any] | None = None,
    artifacts: list[str] | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    worker: str | None = None,
    output_prefix: str | None = None,
) -> bool:
    """Move a running job to a terminal status; False if it was not running (or, with
    ``worker``, not running under that worker).  A succeeded job's ``artifacts`` are the
    names of its results under ``output_prefix``."""
    assert status in TERMINAL_STATUSES
    stamp = now()
    values: dict[str, Any] = {
        "status": status,
        "finished_at": stamp,
        "updated_at": stamp,
        "error_code": error_code,
        "error_message": error_message,
    }
    if status == "succeeded":
        values.update(progress=1.0, report=report, artifacts=artifacts, output_prefix=output_prefix)
    result = session.execute(update(Job).where(*_held(job_id, worker)).values(**values))
    if result.rowcount == 1:  # type: ignore[attr-defined]
        return True
    if worker is None:
        return False
    # Already ended so by this worker: a retry after a commit whose answer the connection lost.
    row = session.execute(select(Job.status, Job.worker, Job.output_prefix).where(Job.id == job_id)).first()
    return row is not None and tuple(row) == (
        status,
        worker,
        output_prefix if status == "succeeded" else row.output_prefix,
    )


def requeue_job(session: Session, *, job_id: str, worker: str | None = None) -> bool:
    """Put a running job back in the queue (its worker died); False if it was not running.

    A job whose cancel was asked is cancelled instead (and False returned): queued with the
    cancel flag set, no worker would ever claim it."""
    stamp = now()
    cancelled = session.execute(
        update(Job)
        .where(*_held(job_id, worker), Job.cancel_requested.is_(True))
        .values(status="cancelled", worker=None, heartbeat_at=None, finished_at=stamp, updated_at=stamp)
    )
    if cancelled.rowcount == 1:  # type: ignore[attr-defined]
        return False
    result = session.execute(
        update(Job)
        .where(*_held(job_id, worker))
        .values(status="queued", stage=None, worker=None, heartbeat_at=None, updated_at=stamp)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def mark_stale(session: Session, *, job_id: str) -> None:
    """Undo a re-queue whose message could not be sent: running, long silent."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(status="running", heartbeat_at=datetime(1970, 1, 1, tzinfo=UTC), updated_at=now())
    )


def stale_running_jobs(session: Session, *, timeout_s: float) -> list[Job]:
    """Running jobs whose heartbeat is older than ``timeout_s``."""
    limit = now() - timedelta(seconds=timeout_s)
    return list(session.scalars(select(Job).where(Job.status == "running", Job.heartbeat_at < limit)))


def stale_queued_jobs(session: Session, *, older_than_s: float) -> list[str]:
    """Queued jobs untouched for ``older_than_s``, each touched now (conditionally, so two
    reapers never both claim one): their message may be lost, and is sent again."""
    limit = now() - timedelta(seconds=older_than_s)
    ids = list(session.scalars(select(Job.id).where(Job.status == "queued", Job.updated_at < limit)))
    touched = []
    for job_id in ids:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued", Job.updated_at < limit)
            .values(updated_at=now())
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            touched.append(job_id)
    return touched


def delete_job(session: Session, *, job_id: str) -> None:
    job = session.get(Job, job_id)
    if job is not None:
        session.delete(job)
        session.flush()
