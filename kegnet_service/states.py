"""The job states, in one place: the row's ``status`` column, the API's schema and the CLI read them.

Imports nothing heavy, so the command-line client uses it without SQLAlchemy.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """A job's state. ``queued -> running -> succeeded | failed | cancelled``; a running job
    whose worker died goes back to ``queued`` until it has used its attempts."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


JOB_STATUSES = tuple(status.value for status in JobStatus)
TERMINAL_STATUSES = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value)
