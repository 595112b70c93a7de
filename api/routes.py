"""The v1 routes and health checks: HTTP handling only.

Persistence lives in kegnet_service.jobs, submission in
kegnet_service.submission; both raise domain errors that api.errors maps to
answers (one handler per kind), so no route catches a database or store error.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse

from api.deps import ApiKeyDep, OwnerDep, Services, ServicesDep, SessionDep, authenticate
from api.errors import ApiError
from api.schemas import ErrorBody, JobList, JobPublic, Readiness
from api.uploads import Upload, receive_upload
from kegnet_core.archive import ArchiveLimits, inspect_torchscript_archive
from kegnet_core.artifacts import DOWNLOADS, SAMPLES, STUDENT, Artifact
from kegnet_core.errors import InvalidModelFileError, SpecError
from kegnet_core.operators import ForbiddenOperatorError, check_archive_code
from kegnet_core.spec import parse_spec_json
from kegnet_service import jobs
from kegnet_service.db import ping
from kegnet_service.errors import (
    ArtifactNotFound,
    JobFinished,
    JobNotFinished,
    JobNotFound,
)
from kegnet_service.keys import owner_and_job
from kegnet_service.models import Job
from kegnet_service.queue import ping_broker
from kegnet_service.states import JOB_STATUSES, TERMINAL_STATUSES
from kegnet_service.storage import ObjectMissing
from kegnet_service.submission import submit_job

router = APIRouter()
log = logging.getLogger("kegnet.api")

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 409, 413, 415, 422, 503)
}

# SQLite and Postgres take a signed 64-bit OFFSET; a bigger one would be a 500, not a 422.
MAX_OFFSET = 2**62


def to_public(job: Job) -> JobPublic:
    base = f"/v1/jobs/{job.id}"
    links = {"self": base, "cancel": f"{base}/cancel"}
    for name, artifact in DOWNLOADS.items():
        if job.status == "succeeded" and artifact.file in (job.artifacts or []):
            links[name] = f"{base}/{name}"
    if job.status == "running" and (job.metrics or {}).get("preview_version"):
        links[SAMPLES.name] = f"{base}/{SAMPLES.name}"  # the live preview while generators train
    error = {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None
    derived = ("error", "links", "estimated_duration_s")
    columns = {name: getattr(job, name) for name in JobPublic.model_fields if name not in derived}
    # The worker's estimate from its warm-up once it has one; before, the budget the job must keep.
    estimate = (job.metrics or {}).get("estimate_s") or (job.spec or {}).get("budget_s")
    return JobPublic.model_validate(
        {**columns, "error": error, "links": links, "estimated_duration_s": estimate}
    )


def _parse_spec(text: str | None) -> dict[str, Any]:
    if text is None:
        raise ApiError(422, "missing_field", "the form needs a 'spec' field (JSON)", field="spec")
    try:
        spec = parse_spec_json(text)
    except SpecError as exc:
        field = f"spec.{exc.field}" if exc.field else "spec"
        raise ApiError(422, "invalid_spec", f"{field}: {exc.message}", field=field) from exc
    return spec.to_json_dict()


def _check_budget(spec: dict[str, Any], time_limit_s: float) -> None:
    budget = spec.get("budget_s")
    if budget is not None and budget > time_limit_s:
        raise ApiError(
            422,
            "invalid_spec",
            f"spec.budget_s: {budget:.0f} s is over this service's job time limit of {time_limit_s:.0f} s",
            field="spec.budget_s",
        )


def _check_model(upload: Upload) -> None:
    if upload.path is None:
        raise ApiError(422, "missing_field", "the form needs a 'model' file (TorchScript)", field="model")
    try:
        inspect_torchscript_archive(upload.path, ArchiveLimits())
        check_archive_code(upload.path)
    except (InvalidModelFileError, ForbiddenOperatorError) as exc:
        raise ApiError(422, exc.code, exc.message, field="model") from exc


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
                                "description": "a CompressionSpec, as JSON",
                                "contentMediaType": "application/json",
                                "contentSchema": {"$ref": "#/components/schemas/CompressionSpec"},
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
    idempotency_key = idempotency_key or None  # an empty header is no key (it was stored as one)
    if idempotency_key:
        existing = await run_in_threadpool(_find_idempotent, services, owner, idempotency_key)
        if existing is not None:
            return _job_response(existing, 200)
    upload = await receive_upload(
        request, max_bytes=services.settings.max_upload_bytes, directory=services.settings.home / "tmp"
    )
    try:
        spec = _parse_spec(upload.fields.get("spec"))
        _check_budget(spec, services.settings.job_time_limit_s)
        # Reading a big archive's records and code takes a while: not on the event loop, where
        # it held up every other request (polls included) until it was done.
        await run_in_threadpool(_check_model, upload)
        assert upload.path is not None
        job, created = await run_in_threadpool(
            lambda: submit_job(
                sessions=services.sessions,
                store=services.store,
                celery=services.celery,
                queue=services.settings.queue,
                model_file=upload.path,  # type: ignore[arg-type]
                model_name=upload.filename or "model.pt",
                model_size=upload.size,
                spec=spec,
                owner=owner,
                idempotency_key=idempotency_key,
            )
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
    finally:
        session.close()


def _job_response(job: Job, status: int) -> Response:
    body = to_public(job).model_dump(mode="json")
    return JSONResponse(body, status_code=status, headers={"Location": f"/v1/jobs/{job.id}"})


def _plausible(job_id: str) -> str:
    """``job_id`` where it could name a job (printable ASCII, at most 64 characters), else "":
    a NUL in a path made Postgres refuse the query, and the answer was a 503 "try again"."""
    return job_id if len(job_id) <= 64 and job_id.isascii() and job_id.isprintable() else ""


def _owned_job(session: SessionDep, job_id: str, owner: str) -> Job:
    job = jobs.get_job(session, job_id=job_id, owner=owner) if _plausible(job_id) else None
    if job is None:
        raise JobNotFound(f"no job {job_id!r}")
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
    rows, total = jobs.list_jobs(session, owner=owner, statuses=statuses, limit=limit, offset=offset)
    return JobList(items=[to_public(job) for job in rows], total=total, limit=limit, offset=offset)


@router.get(
    "/v1/jobs/{job_id}", response_model=JobPublic, responses=ERRORS, summary="A job's status and report"
)
async def get_job(job_id: str, services: ServicesDep, key: ApiKeyDep) -> Response:
    # Every client polls this: key check, read and answer take one trip to the thread pool
    # (each trip costs a wake-up of the event loop and a wait for the GIL).
    return await run_in_threadpool(_poll, services, key, job_id)


def _poll(services: Services, key: str | None, job_id: str) -> Response:
    """Key check and job in one SELECT, outside a transaction."""
    session = services.readers()
    try:
        if key is None:
            job = _owned_job(session, job_id, authenticate(session, key))
        else:
            owner, found = owner_and_job(session, key, _plausible(job_id))
            if owner is None:
                raise ApiError(401, "unauthorized", "the API key is not valid")
            if found is None:
                raise JobNotFound(f"no job {job_id!r}")
            job = found
        return Response(to_public(job).model_dump_json(), media_type="application/json")
    finally:
        session.close()


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
    if job.status in TERMINAL_STATUSES:
        raise JobFinished(f"the job already ended: {job.status}")
    job = jobs.request_cancel(session, job=job)
    session.commit()
    log.info("cancel requested", extra={"job_id": job.id, "status": job.status})
    return to_public(job)


def _artifact(
    services: Services, session: SessionDep, job_id: str, owner: str, artifact: Artifact
) -> Response:
    job = _owned_job(session, job_id, owner)
    live_preview = job.status == "running" and (job.metrics or {}).get("preview_version")
    if artifact is SAMPLES and live_preview:
        return _stream(services, jobs.preview_key(job.id), artifact.media_type, {"Cache-Control": "no-store"})
    if job.status != "succeeded":
        raise JobNotFinished(f"the job is {job.status}; {artifact.name} is available once it has succeeded")
    if artifact.file not in (job.artifacts or []):
        what = (
            "an extract job has no student model"
            if artifact is STUDENT
            else f"this job has no {artifact.name}"
        )
        raise ArtifactNotFound(what)
    key = jobs.artifact_key(job.id, artifact.file, job.output_prefix)
    stem = Path(job.model_name).stem
    download = f"{stem}-{artifact.file}" if artifact.attachment else artifact.file
    url = services.store.presigned_url(key, download) if services.settings.presign_downloads else None
    if url is not None:
        return RedirectResponse(url, status_code=307)
    headers = {"Content-Disposition": _attachment(download)} if artifact.attachment else {}
    return _stream(services, key, artifact.media_type, headers)


def _attachment(name: str) -> str:
    """A Content-Disposition for any uploaded file's name: an ASCII fallback, and the name itself
    percent-encoded as UTF-8 (RFC 6266); headers are latin-1, and a Cyrillic name was a 500."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def _stream(services: Services, key: str, media_type: str, headers: dict[str, str]) -> Response:
    try:
        size = services.store.size(key)
        chunks = services.store.iter_bytes(key)
    except ObjectMissing as exc:
        raise ArtifactNotFound(f"{key.rsplit('/', 1)[-1]} is missing from the store") from exc
    return StreamingResponse(chunks, media_type=media_type, headers={**headers, "Content-Length": str(size)})


def _artifact_route(artifact: Artifact) -> None:
    def endpoint(job_id: str, services: ServicesDep, session: SessionDep, owner: OwnerDep) -> Response:
        return _artifact(services, session, job_id, owner, artifact)

    endpoint.__name__ = f"download_{artifact.name.replace('.', '_')}"
    router.add_api_route(
        f"/v1/jobs/{{job_id}}/{artifact.name}",
        endpoint,
        methods=["GET"],
        summary=artifact.summary[:1].upper() + artifact.summary[1:],
        responses={
            **ERRORS,
            200: {"content": {artifact.media_type: {}}},
            307: {"description": "presigned URL"},
        },
        response_class=Response,
    )


for _download in DOWNLOADS.values():
    _artifact_route(_download)


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
