"""Request and response bodies, separate from the job table (JobSpec in, JobPublic out)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JobStage = Literal["validating", "extracting", "compressing", "distilling", "exporting"]


class JobSpec(BaseModel):
    """What to do with the uploaded model. Only ``input_shape`` is required."""

    model_config = ConfigDict(extra="forbid")

    input_shape: list[int] = Field(
        ...,
        min_length=1,
        max_length=3,
        description="C, H, W of one image, or D of a feature vector",
        examples=[[1, 32, 32]],
    )
    layers: list[str] | None = Field(
        None,
        description="module paths to factorise; "
        "null: every layer that gets smaller except the first and the output layer",
    )
    ranks: Literal["evbmf"] | float | dict[str, list[int]] = Field(
        "evbmf", description="'evbmf', a keep fraction in (0, 1], or {layer: [out_rank, in_rank]}"
    )
    target_ratio: float | None = Field(
        None, description="choose ranks so the whole model shrinks at least this much"
    )
    prior: Literal["kegnet", "uniform", "gaussian", "strokes", "none"] = Field(
        "kegnet",
        description="training samples: KegNet generators (with random strokes for images in the "
        "default preset), U(-1,1), N(0,1), random pen strokes alone, or none (Tucker only)",
    )
    preset: Literal["quick", "default", "paper"] = "default"
    seed: int = Field(0, ge=0, lt=2**31)
    task: Literal["compress", "extract"] = Field(
        "compress", description="'extract' trains the generators only"
    )


class JobError(BaseModel):
    code: str
    message: str


class JobPublic(BaseModel):
    id: str
    status: JobStatus
    stage: JobStage | None
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
