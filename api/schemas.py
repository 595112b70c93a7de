"""Response bodies, separate from the job table (the request's spec is kegnet_core.spec.CompressionSpec)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from kegnet_core.spec import Stage
from kegnet_service.states import JobStatus


class JobError(BaseModel):
    code: str
    message: str


class JobPublic(BaseModel):
    id: str
    status: JobStatus
    stage: Stage | None
    progress: float = Field(ge=0, le=1)
    spec: dict[str, Any]
    model_name: str
    model_size: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    cancel_requested: bool
    error: JobError | None
    report: dict[str, Any] | None = Field(None, description="the compression report, once succeeded")
    metrics: dict[str, Any] | None = Field(None, description="latest training metrics and loss curves")
    estimated_duration_s: float | None = Field(
        None,
        description="how long the job should run on its worker's device: the worker's estimate from "
        "its warm-up once measured, before that the spec's budget_s; null without a budget",
    )
    links: dict[str, str]


class JobList(BaseModel):
    items: list[JobPublic]
    total: int
    limit: int
    offset: int


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str]
