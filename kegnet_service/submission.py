"""Submitting a job: store the model, commit the row, send the task; undo all of it on failure.

The routes call these functions and map the domain errors they raise
(:mod:`kegnet_service.errors`) to HTTP answers; nothing here knows HTTP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from kegnet_service import jobs
from kegnet_service.errors import BrokerUnavailable, Conflict, DatabaseUnavailable, StoreUnavailable
from kegnet_service.models import Job
from kegnet_service.queue import send_job
from kegnet_service.storage import LocalStore, S3Store, StoreError


def submit_job(
    *,
    sessions: sessionmaker[Session],
    store: LocalStore | S3Store,
    celery: Celery,
    queue: str,
    model_file: Path,
    model_name: str,
    model_size: int,
    spec: dict[str, Any],
    owner: str,
    idempotency_key: str | None,
) -> tuple[Job, bool]:
    """Create and queue a job; return it and whether it is new (an idempotent repeat is not).

    The model goes to the store first, then the row is committed, then the
    task is sent by name.  If the database or the broker fails, what was
    already done is undone: no orphan row, no orphan object.
    """
    job_id = jobs.new_job_id()
    try:
        store.put_file(jobs.model_key(job_id), model_file)
    except StoreError as exc:
        raise StoreUnavailable() from exc
    session = sessions()
    try:
        try:
            job = jobs.create_job(
                session,
                job_id=job_id,
                owner=owner,
                spec=spec,
                model_name=model_name,
                model_size=model_size,
                idempotency_key=idempotency_key,
            )
            session.commit()
        except IntegrityError:
            session.rollback()
            store.delete_prefix(f"jobs/{job_id}")
            existing = jobs.find_by_idempotency_key(session, owner=owner, key=idempotency_key or "")
            if existing is None:
                raise Conflict("the job could not be created; retry") from None
            return existing, False
        except SQLAlchemyError as exc:
            session.rollback()
            store.delete_prefix(f"jobs/{job_id}")
            raise DatabaseUnavailable() from exc
        try:
            send_job(celery, job_id, queue)
        except Exception as exc:
            try:
                jobs.delete_job(session, job_id=job_id)
                session.commit()
            finally:
                store.delete_prefix(f"jobs/{job_id}")
            raise BrokerUnavailable() from exc
        return job, True
    finally:
        session.close()
