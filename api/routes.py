"""The v1 routes and health checks; persistence lives in kegnet_service.jobs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from api.deps import OwnerDep, Services, ServicesDep, SessionDep
from api.errors import ApiError
from api.schemas import ErrorBody, JobList, JobPublic, JobSpec, Readiness
from api.uploads import Upload, receive_upload
from kegnet_core.archive import ArchiveLimits, inspect_torchscript_archive
from kegnet_core.config import spec_from_dict
from kegnet_core.errors import InvalidModelFileError, SpecError
from kegnet_service import jobs
from kegnet_service.db import ping
from kegnet_service.models import JOB_STATUSES, Job
from kegnet_service.queue import ping_broker, send_job
from kegnet_service.storage import ObjectMissing, StoreError

router = APIRouter()
log = logging.getLogger("kegnet.api")

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 409, 413, 415, 422, 503)
}

# SQLite and Postgres take a signed 64-bit OFFSET; a bigger one would be a 500, not a 422.
MAX_OFFSET = 2**62

# name in the URL -> (file the worker stores, media type, download name)
ARTIFACTS = {
    "model": ("student.pt", "application/octet-stream", "student.pt"),
    "report": ("report.json", "application/json", "report.json"),
    "samples.png": ("samples.png", "image/png", "samples.png"),
    "latent_walk.png": ("latent_walk.png", "image/png", "latent_walk.png"),
    "generators": ("generators.zip", "application/zip", "generators.zip"),
}


def to_public(job: Job) -> JobPublic:
    base = f"/v1/jobs/{job.id}"
    links = {"self": base, "cancel": f"{base}/cancel"}
    for name, (filename, _, _) in ARTIFACTS.items():
        if job.status == "succeeded" and filename in (job.artifacts or []):
            links[name] = f"{base}/{name}"
    if job.status == "running" and (job.metrics or {}).get("preview_version"):
        links["samples.png"] = f"{base}/samples.png"  # the live preview while generators train
    error = {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None
    return JobPublic(
        id=job.id,
        status=job.status,  # type: ignore[arg-type]
        stage=job.stage,  # type: ignore[arg-type]
        progress=job.progress,
        spec=job.spec,
        model_name=job.model_name,
        model_size=job.model_size,
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        attempts=job.attempts,
        cancel_requested=job.cancel_requested,
        error=error,  # type: ignore[arg-type]
        report=job.report,
        metrics=job.metrics,
        links=links,
    )


def _parse_spec(text: str | None) -> dict[str, Any]:
    if text is None:
        raise ApiError(422, "missing_field", "the form needs a 'spec' field (JSON)", field="spec")
    try:
        spec = JobSpec.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        field = f"spec.{where}" if where else "spec"
        raise ApiError(422, "invalid_spec", f"{field}: {first['msg']}", field=field) from exc
    data = spec.model_dump()
    try:
        spec_from_dict(data)
    except SpecError as exc:
        field = f"spec.{exc.field}" if exc.field else "spec"
        raise ApiError(422, "invalid_spec", f"{field}: {exc.message}", field=field) from exc
    return data


def _check_model(upload: Upload) -> None:
    if upload.path is None:
        raise ApiError(422, "missing_field", "the form needs a 'model' file (TorchScript)", field="model")
    try:
        inspect_torchscript_archive(upload.path, ArchiveLimits())
    except InvalidModelFileError as exc:
        raise ApiError(422, exc.code, exc.message, field="model") from exc


def _store_and_enqueue(
    services: Services, upload: Upload, spec: dict[str, Any], owner: str, idempotency_key: str | None
) -> tuple[Job, bool]:
    """Put the model in the store, commit the row, send the task; undo all on failure."""
    assert upload.path is not None
    job_id = jobs.new_job_id()
    key = jobs.model_key(job_id)
    try:
        services.store.put_file(key, upload.path)
    except StoreError as exc:
        raise ApiError(503, "store_unavailable", "the model store is unreachable; try again shortly") from exc
    session = services.sessions()
    try:
        job = jobs.create_job(
            session,
            job_id=job_id,
            owner=owner,
            spec=spec,
            model_name=upload.filename or "model.pt",
            model_size=upload.size,
            idempotency_key=idempotency_key,
        )
        session.commit()
    except IntegrityError:
        session.rollback()
        services.store.delete_prefix(f"jobs/{job_id}")
        existing = jobs.find_by_idempotency_key(session, owner=owner, key=idempotency_key or "")
        session.close()
        if existing is None:
            raise ApiError(409, "conflict", "the job could not be created; retry") from None
        return existing, False
    except SQLAlchemyError as exc:
        session.rollback()
        session.close()
        services.store.delete_prefix(f"jobs/{job_id}")
        raise ApiError(
            503, "database_unavailable", "the job database is unreachable; try again shortly"
        ) from exc
    try:
        send_job(services.celery, job_id, services.settings.queue)
    except Exception as exc:
        try:
            jobs.delete_job(session, job_id=job_id)
            session.commit()
        finally:
            session.close()
            services.store.delete_prefix(f"jobs/{job_id}")
        raise ApiError(503, "broker_unavailable", "the job queue is unreachable; try again shortly") from exc
    session.close()
    return job, True


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=JobPublic,
    responses=ERRORS,
    summary="Upload a TorchScript classifier and start a job",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["model", "spec"],
                        "properties": {
                            "model": {
                                "type": "string",
                                "format": "binary",
                                "description": "TorchScript file",
                            },
                            "spec": {
                                "type": "string",
                                "description": "a JobSpec, as JSON",
                                "contentMediaType": "application/json",
                                "contentSchema": {"$ref": "#/components/schemas/JobSpec"},
                                "example": '{"input_shape": [1, 32, 32], "preset": "quick"}',
                            },
                        },
                    }
                }
            },
        }
    },
)
async def create_job(
    request: Request,
    services: ServicesDep,
    owner: OwnerDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    """Stream the model to the store, record the job, and queue it (202 + Location)."""
    if idempotency_key:
        existing = await run_in_threadpool(_find_idempotent, services, owner, idempotency_key)
        if existing is not None:
            return _job_response(existing, 200)
    upload = await receive_upload(
        request, max_bytes=services.settings.max_upload_bytes, directory=services.settings.home / "tmp"
    )
    try:
        spec = _parse_spec(upload.fields.get("spec"))
        _check_model(upload)
        job, created = await run_in_threadpool(
            _store_and_enqueue, services, upload, spec, owner, idempotency_key
        )
    finally:
        upload.discard()
    if created:
        log.info("job created", extra={"job_id": job.id, "owner": owner, "model_bytes": upload.size})
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is not None:
            metrics.upload_bytes.observe(upload.size)
    return _job_response(job, 202 if created else 200)


def _find_idempotent(services: Services, owner: str, key: str) -> Job | None:
    session = services.sessions()
    try:
        return jobs.find_by_idempotency_key(session, owner=owner, key=key)
    except SQLAlchemyError as exc:
        raise ApiError(
            503, "database_unavailable", "the job database is unreachable; try again shortly"
        ) from exc
    finally:
        session.close()


def _job_response(job: Job, status: int) -> Response:
    body = to_public(job).model_dump(mode="json")
    return JSONResponse(body, status_code=status, headers={"Location": f"/v1/jobs/{job.id}"})


def _owned_job(session: SessionDep, job_id: str, owner: str) -> Job:
    try:
        job = jobs.get_job(session, job_id=job_id, owner=owner)
    except SQLAlchemyError as exc:
        raise ApiError(
            503, "database_unavailable", "the job database is unreachable; try again shortly"
        ) from exc
    if job is None:
        raise ApiError(404, "job_not_found", f"no job {job_id!r}")
    return job


@router.get("/v1/jobs", response_model=JobList, responses=ERRORS, summary="List your jobs, newest first")
def list_jobs(
    session: SessionDep,
    owner: OwnerDep,
    status: Annotated[list[str] | None, Query(description="filter by status (repeatable)")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> JobList:
    statuses = status or []
    unknown = [value for value in statuses if value not in JOB_STATUSES]
    if unknown:
        raise ApiError(
            422,
            "invalid_request",
            f"status: {unknown[0]!r} is not one of {', '.join(JOB_STATUSES)}",
            field="status",
        )
    try:
        rows, total = jobs.list_jobs(session, owner=owner, statuses=statuses, limit=limit, offset=offset)
    except SQLAlchemyError as exc:
        raise ApiError(
            503, "database_unavailable", "the job database is unreachable; try again shortly"
        ) from exc
    return JobList(items=[to_public(job) for job in rows], total=total, limit=limit, offset=offset)


@router.get(
    "/v1/jobs/{job_id}", response_model=JobPublic, responses=ERRORS, summary="A job's status and report"
)
def get_job(job_id: str, session: SessionDep, owner: OwnerDep) -> JobPublic:
    return to_public(_owned_job(session, job_id, owner))


@router.post(
    "/v1/jobs/{job_id}/cancel",
    response_model=JobPublic,
    status_code=202,
    responses=ERRORS,
    summary="Cancel a job",
)
def cancel_job(job_id: str, session: SessionDep, owner: OwnerDep) -> JobPublic:
    """A queued job is cancelled at once; a running one stops within one training step."""
    job = _owned_job(session, job_id, owner)
    if job.status in ("succeeded", "failed", "cancelled"):
        raise ApiError(409, "job_finished", f"the job already ended: {job.status}")
    job = jobs.request_cancel(session, job=job)
    session.commit()
    log.info("cancel requested", extra={"job_id": job.id, "status": job.status})
    return to_public(job)


def _artifact(services: Services, session: SessionDep, job_id: str, owner: str, name: str) -> Response:
    job = _owned_job(session, job_id, owner)
    filename, media_type, download_name = ARTIFACTS[name]
    if name == "samples.png" and job.status == "running" and (job.metrics or {}).get("preview_version"):
        return _stream(services, jobs.preview_key(job.id), media_type, {"Cache-Control": "no-store"})
    if job.status != "succeeded":
        raise ApiError(
            409, "job_not_finished", f"the job is {job.status}; {name} is available once it has succeeded"
        )
    if filename not in (job.artifacts or []):
        what = "an extract job has no student model" if name == "model" else f"this job has no {name}"
        raise ApiError(404, "artifact_not_found", what)
    key = jobs.artifact_key(job.id, filename)
    stem = Path(job.model_name).stem
    attachment = f"{stem}-{download_name}" if name in ("model", "generators") else download_name
    url = services.store.presigned_url(key, attachment) if services.settings.presign_downloads else None
    if url is not None:
        return RedirectResponse(url, status_code=307)
    headers = {}
    if media_type not in ("application/json", "image/png"):
        headers["Content-Disposition"] = f'attachment; filename="{attachment}"'
    return _stream(services, key, media_type, headers)


def _stream(services: Services, key: str, media_type: str, headers: dict[str, str]) -> Response:
    try:
        size = services.store.size(key)
        chunks = services.store.iter_bytes(key)
    except ObjectMissing as exc:
        raise ApiError(
            404, "artifact_not_found", f"{key.rsplit('/', 1)[-1]} is missing from the store"
        ) from exc
    except StoreError as exc:
        raise ApiError(503, "store_unavailable", "the model store is unreachable; try again shortly") from exc
    return StreamingResponse(chunks, media_type=media_type, headers={**headers, "Content-Length": str(size)})


def _artifact_route(name: str, summary: str) -> None:
    def endpoint(job_id: str, services: ServicesDep, session: SessionDep, owner: OwnerDep) -> Response:
        return _artifact(services, session, job_id, owner, name)

    endpoint.__name__ = f"download_{name.replace('.', '_')}"
    router.add_api_route(
        f"/v1/jobs/{{job_id}}/{name}",
        endpoint,
        methods=["GET"],
        summary=summary,
        responses={
            **ERRORS,
            200: {"content": {ARTIFACTS[name][1]: {}}},
            307: {"description": "presigned URL"},
        },
        response_class=Response,
    )


_artifact_route("model", "Download the compressed TorchScript model")
_artifact_route("report", "The compression report (JSON)")
_artifact_route("samples.png", "Generated samples, one row per class")
_artifact_route("latent_walk.png", "A latent walk from one class to another")
_artifact_route("generators", "The trained generators (TorchScript, zipped) and the latent walk")


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness}},
    summary="Dependencies reachable",
)
def readyz(services: ServicesDep) -> Response:
    checks: dict[str, str] = {}
    for name, check in (
        ("database", lambda: ping(services.settings.resolved_database_url)),
        ("broker", lambda: ping_broker(services.celery)),
        ("store", services.store.ping),
    ):
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"unavailable: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)
