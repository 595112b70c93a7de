"""Logging for the service: JSON lines when not on a terminal, with the job id on every record.

The job id travels from the API (which logs the job it created) to the worker
(which binds it for the whole run) through a context variable, so a log
search for one id shows the job's whole life across processes.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

current_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("kegnet_job_id", default=None)

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JobIdFilter(logging.Filter):
    """Puts the current job id (if any) on every record as ``job_id``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = current_job_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, job_id and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and value is not None:
                entry[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        job_id = getattr(record, "job_id", None)
        return f"{text} [job {job_id}]" if job_id else text


def configure_logging(level: str | int = "INFO", json_lines: bool | None = None) -> None:
    """Set up the root logger once per process (call from entry points, never on import).

    ``level`` is a name (``"info"``) or a number: Celery hands its
    ``setup_logging`` signal the number.
    """
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(JobIdFilter())
    handler.setFormatter(
        JsonFormatter() if json_lines else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)


@contextmanager
def bound_job(job_id: str) -> Iterator[None]:
    """Every record logged inside carries ``job_id``."""
    token = current_job_id.set(job_id)
    try:
        yield
    finally:
        current_job_id.reset(token)
