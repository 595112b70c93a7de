"""The job task: claim the row, fetch the model, run the core, store the artifacts.

The task is idempotent before ``acks_late``: ``claim_job`` only takes a
queued job, so a message delivered twice runs the job once.  torch and the
core are imported inside the task, in the pool's child process.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from celery import Celery, Task

from kegnet_core.errors import Cancelled, KegnetError
from kegnet_core.progress import ProgressEvent
from kegnet_service import jobs
from kegnet_service.db import session_scope
from kegnet_service.logs import bound_job
from kegnet_service.queue import REAP, RUN_JOB
from kegnet_service.reaper import reap_once
from kegnet_service.retry import is_transient, with_retries
from kegnet_service.settings import Settings, get_settings
from kegnet_service.storage import LocalStore, S3Store, StoreError, settings_store
from worker.heartbeat import Heartbeat
from worker.reporting import JobReporter

log = logging.getLogger("kegnet.worker")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _store(settings: Settings) -> LocalStore | S3Store:
    return settings_store(settings)


def _upload_outputs(store: LocalStore | S3Store, job_id: str, prefix: str, out_dir: Path) -> list[str]:
    uploaded = []
    for path in sorted(out_dir.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            store.put_file(jobs.artifact_key(job_id, path.name, prefix), path)
            uploaded.append(path.name)
    return uploaded


def _save_preview(store: LocalStore | S3Store, job_id: str, png: bytes, work: Path) -> None:
    """The live sample grid the dashboard shows while generators train."""
    path = work / "preview.png"
    path.write_bytes(png)
    try:
        store.put_file(jobs.preview_key(job_id), path)
    except StoreError:
        log.warning("could not store a preview for job %s", job_id)


class CheckpointMirror:
    """Keeps the store's copy of a job's checkpoint folder up to date, so a re-queued job resumes.

    ``fetch`` brings the last attempt's files down before the run; ``push``
    (after progress events, at most every ``interval_s``) uploads files that
    changed.  The worker deletes them once the job has ended (``_cleanup``).
    """

    def __init__(self, store: LocalStore | S3Store, job_id: str, folder: Path, interval_s: float) -> None:
        self.store, self.job_id, self.folder, self.interval_s = store, job_id, folder, interval_s
        self.prefix = jobs.checkpoint_prefix(job_id)
        self.sent: dict[str, float] = {}
        self.last_push = 0.0

    def fetch(self) -> list[str]:
        self.folder.mkdir(parents=True, exist_ok=True)
        names = []
        for key in with_retries(lambda: self.store.list_keys(self.prefix), what="listing checkpoints"):
            name = key.rsplit("/", 1)[-1]
            target = self.folder / name
            with_retries(partial(self.store.get_file, key, target), what="fetching a checkpoint")
            self.sent[name] = target.stat().st_mtime
            names.append(name)
        return names

    def push(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_push < self.interval_s:
            return
        self.last_push = now
        for path in sorted(self.folder.glob("*.pt")):
            modified = path.stat().st_mtime
            if self.sent.get(path.name) == modified:
                continue
            try:
                self.store.put_file(f"{self.prefix}/{path.name}", path)
                self.sent[path.name] = modified
            except StoreError:
                log.warning("could not store a checkpoint of job %s; the next one will", self.job_id)


def _finish(settings: Settings, job_id: str, worker: str, **values: Any) -> bool:
    """End the job as ``values`` say; False where ``worker`` no longer holds it (it was re-queued
    and another worker took it), and then this worker must leave its stored files alone."""

    def write() -> bool:
        with session_scope(settings.resolved_database_url) as session:
            return jobs.finish_job(session, job_id=job_id, worker=worker, **values)

    held: bool = with_retries(write, what=f"recording the end of job {job_id}")
    if not held:
        log.warning("job %s is no longer this worker's (%s); its end is not recorded here", job_id, worker)
    return held


def _cleanup(store: LocalStore | S3Store, job_id: str, keep: str | None = None) -> None:
    """Delete an ended job's checkpoints and results but ``keep``, as far as the store lets us
    (the job's state is already recorded: a store outage here must not leave it running)."""
    try:
        jobs.discard_files(store, job_id=job_id, keep=keep)
    except StoreError:
        log.warning("could not delete job %s's leftover files; they stay until the job is deleted", job_id)


def _drop(store: LocalStore | S3Store, prefix: str) -> None:
    """Delete this attempt's results where they are nobody's (the job is not this worker's)."""
    try:
        store.delete_prefix(prefix)
    except StoreError:
        log.warning("could not delete %s", prefix)


def _requeue(settings: Settings, job_id: str, worker: str) -> bool:
    """Hand the job back (its attempt counts) for the reaper to send again once the outage
    passes; False where it was not this worker's to hand back, or was cancelled instead."""

    def write() -> bool:
        with session_scope(settings.resolved_database_url) as session:
            return jobs.requeue_job(session, job_id=job_id, worker=worker)

    queued: bool = with_retries(write, what=f"re-queueing job {job_id}")
    return queued


def _let_go(settings: Settings, store: LocalStore | S3Store, job_id: str, results: str) -> None:
    """After a hand-back that did not happen: the job was cancelled instead (all its files go)
    or is another worker's (only this attempt's results go)."""
    if _ended(settings, job_id):
        _cleanup(store, job_id)
    else:
        _drop(store, results)


def _ended(settings: Settings, job_id: str) -> bool:
    """Whether the job has failed or been cancelled (nothing of it is needed any more)."""
    with session_scope(settings.resolved_database_url) as session:
        job = jobs.get_job(session, job_id=job_id)
        return job is not None and job.status in ("failed", "cancelled")


def execute_job(job_id: str, settings: Settings | None = None, worker: str | None = None) -> str:
    """Run one job to a terminal state; return that state (or 'skipped')."""
    from kegnet_core.artifacts import Layout, bundle_generators
    from kegnet_core.jail import JailLimits, run_jailed
    from kegnet_core.report import Report
    from kegnet_core.sandbox import SandboxLimits
    from kegnet_core.spec import parse_spec

    settings = settings or get_settings()
    me = worker or worker_name()

    def claim() -> tuple[dict[str, Any], int] | None:
        with session_scope(settings.resolved_database_url) as session:
            job = jobs.claim_job(session, job_id=job_id, worker=me, max_attempts=settings.max_attempts)
            return (dict(job.spec), job.attempts) if job is not None else None

    # If the database stays away past the retries the message is dropped and the row stays
    # queued: the reaper sends it again later (kegnet_service.reaper).
    claimed = with_retries(claim, what=f"claiming job {job_id}")
    store = _store(settings)
    if claimed is None:
        log.info("job %s is not queued; skipping", job_id)
        if _ended(settings, job_id):  # given up at this claim (too many attempts), or cancelled
            _cleanup(store, job_id)
        return "skipped"
    spec_data, attempt = claimed
    results = jobs.attempt_prefix(job_id, attempt)
    work = Path(tempfile.mkdtemp(prefix=f"job-{job_id}-", dir=_work_dir(settings)))
    outcome = "failed"
    try:
        spec = parse_spec(spec_data)
        teacher = work / "teacher.pt"
        # The heartbeat starts before the teacher is fetched: a slow download must not look like
        # a dead worker and have the job run twice.
        with Heartbeat(
            settings.resolved_database_url, job_id, settings.heartbeat_interval_s, me
        ) as heartbeat:
            # A store that stays away hands the job back (``except StoreError`` below).
            with_retries(
                lambda: store.get_file(jobs.model_key(job_id), teacher), what=f"fetching job {job_id}"
            )
            reporter = JobReporter(
                database_url=settings.resolved_database_url,
                job_id=job_id,
                task=spec.task,
                time_limit_s=settings.job_time_limit_s,
                interval_s=min(settings.heartbeat_interval_s, 2.0),
                cancelled=heartbeat.cancelled,
                save_preview=lambda png: _save_preview(store, job_id, png, work),
                worker=me,
            )
            out_dir = work / "out"
            mirror = CheckpointMirror(store, job_id, work / "checkpoint", settings.checkpoint_upload_s)
            if resumed := mirror.fetch():
                log.info("job %s resumes from its checkpoints %s", job_id, resumed)

            def progress(event: ProgressEvent) -> None:
                reporter(event)
                mirror.push()

            limits = SandboxLimits(
                memory_bytes=settings.sandbox_memory_mb * 1024**2,
                cpu_seconds=int(settings.sandbox_timeout_s) + 1,
                wall_seconds=settings.sandbox_timeout_s,
            )
            # The model runs only in a jailed child: no secrets, its own files, no network.
            report_json, isolation = run_jailed(
                teacher,
                spec.to_json_dict(),
                out_dir,
                scratch=work / "scratch",
                limits=JailLimits(
                    memory_bytes=settings.jail_memory_mb * 1024**2,
                    cpu_seconds=int(settings.job_time_limit_s) * max(1, os.cpu_count() or 1),
                    wall_seconds=float(settings.job_time_limit_s),
                    threads=settings.jail_threads,
                ),
                progress=progress,
                device=settings.device,
                previews=True,
                require_filesystem=settings.require_file_isolation,
                sandbox=limits,
                checkpoints=work / "checkpoint",
            )
            log.info("job ran isolated", extra={"isolation": asdict(isolation)})
            report = Report.model_validate(report_json)
            written = report.artifacts
            extras = [*written.samples, *([written.latent_walk] if written.latent_walk else [])]
            bundle_generators(Layout(out_dir), written.generators, extras)
            artifacts = with_retries(
                lambda: _upload_outputs(store, job_id, results, out_dir),
                what=f"storing job {job_id}'s results",
                attempts=9,
            )
        if _finish(
            settings,
            job_id,
            me,
            status="succeeded",
            report=report.model_dump(mode="json"),
            artifacts=artifacts,
            output_prefix=results,
        ):
            outcome = "succeeded"
            _cleanup(store, job_id, keep=results)
        else:
            outcome = "skipped"
            _drop(store, results)  # nobody's results: the job is another worker's now
    except Cancelled:
        if _finish(settings, job_id, me, status="cancelled"):
            _cleanup(store, job_id)
        outcome = "cancelled"
    except KegnetError as exc:  # the model's or the spec's fault, or the job's time limit
        message = f"{exc.field}: {exc.message}" if exc.field else exc.message
        if _finish(settings, job_id, me, status="failed", error_code=exc.code, error_message=message):
            _cleanup(store, job_id)
    except StoreError as exc:
        if is_transient(exc):
            # The store stayed away past the retries (fetching the teacher, or storing the
            # results): the job goes back to the queue, and its next attempt resumes from the
            # checkpoints; the attempts limit ends an outage that never passes.
            log.warning("the store stayed unreachable; job %s goes back to the queue", job_id)
            outcome = "requeued" if _requeue(settings, job_id, me) else "skipped"
            if outcome == "skipped":
                _let_go(settings, store, job_id, results)
        else:
            _finish(settings, job_id, me, status="failed", error_code="store_error", error_message=str(exc))
    except Exception as exc:
        log.exception("job %s failed", job_id)
        if _finish(
            settings,
            job_id,
            me,
            status="failed",
            error_code="internal_error",
            error_message=f"{type(exc).__name__}: {exc}",
        ):
            _cleanup(store, job_id)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return outcome


def _work_dir(settings: Settings) -> Path:
    folder = settings.home / "work"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def register_tasks(app: Celery) -> None:
    @app.task(name=RUN_JOB, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def run_job(self: Task, job_id: str) -> str:
        with bound_job(job_id):
            log.info("job received")
            outcome = execute_job(job_id, worker=f"{self.request.hostname}:{os.getpid()}")
            log.info("job ended: %s", outcome, extra={"outcome": outcome})
            return outcome

    @app.task(name=REAP, ignore_result=True)
    def reap_stale_jobs() -> list[str]:
        return reap_once(get_settings(), app)
