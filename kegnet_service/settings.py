"""One fail-fast settings object, read from ``KEGNET_*`` environment variables.

With nothing set, everything lives under ``$KEGNET_HOME`` (default
``./.kegnet``): SQLite for jobs, a local folder for models and a filesystem
Celery broker, so ``kegnet serve`` needs no server.  Point the URLs at
Postgres, Redis and S3 for the scaled-out deployment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEGNET_", extra="ignore")

    home: Path = Field(default=Path(".kegnet"), description="where the embedded default keeps its state")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in home")
    broker_url: str | None = Field(default=None, description="Celery broker URL; default a folder in home")
    storage_url: str | None = Field(default=None, description="file:///path or s3://bucket/prefix")
    s3_endpoint_url: str | None = Field(default=None, description="S3 API endpoint (MinIO, SeaweedFS)")
    s3_public_endpoint_url: str | None = Field(
        default=None, description="endpoint users can reach, for presigned download URLs"
    )
    s3_region: str | None = None
    presign_downloads: bool = Field(
        default=False, description="answer downloads with a presigned S3 URL (307) instead of streaming them"
    )
    queue: str = Field(default="kegnet", description="Celery queue that jobs are sent to")
    max_upload_bytes: int = Field(default=512 * 1024**2, gt=0)
    job_time_limit_s: int = Field(default=6 * 3600, gt=0, description="a job running longer fails")
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    heartbeat_timeout_s: float = Field(
        default=120.0, gt=0, description="a running job silent this long is re-queued"
    )
    max_attempts: int = Field(default=3, ge=1, description="attempts before a job that kills workers fails")
    api_keys: str = Field(
        default="", description="owner:key pairs (or bare keys), comma-separated, seeded at start"
    )
    auth: bool = Field(default=True, description="require API keys on /v1")
    device: str | None = Field(
        default=None, description="torch device for the worker (default: cuda when present)"
    )
    sandbox_memory_mb: int = Field(
        default=8192, gt=0, description="memory limit when first loading an upload"
    )
    sandbox_timeout_s: float = Field(
        default=300.0, gt=0, description="time limit when first loading an upload"
    )
    reap_interval_s: float = Field(default=15.0, gt=0, description="seconds between reaper rounds")
    queued_resend_s: float = Field(
        default=600.0, gt=0, description="a job queued this long without a worker taking it is sent again"
    )
    checkpoint_upload_s: float = Field(
        default=30.0, gt=0, description="at most this often a running job's checkpoints go to the store"
    )
    jail_memory_mb: int = Field(
        default=16384, gt=0, description="address-space limit of a job's process (CPU jobs)"
    )
    jail_threads: int = Field(
        default=0, ge=0, description="torch threads in a job's process (0: torch's choice)"
    )
    require_file_isolation: bool = Field(
        default=False,
        description="refuse to run models on a worker whose kernel cannot confine a job's files (Landlock)",
    )

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'kegnet.db'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        return self.home / "broker"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or (self.home / "store").as_uri()

    @property
    def uses_filesystem_broker(self) -> bool:
        return self.resolved_broker_url.startswith("filesystem://")


@lru_cache
def get_settings() -> Settings:
    """The process's settings (tests clear the cache after changing the environment)."""
    return Settings()
