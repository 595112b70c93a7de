"""Turns the core's progress events into job-row updates: throttled, with heartbeat,
cancellation and the per-job time limit."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kegnet_core.errors import Cancelled, TimeLimitError
from kegnet_core.progress import ProgressEvent
from kegnet_service import jobs
from kegnet_service.db import session_scope
from kegnet_service.retry import is_transient

log = logging.getLogger("kegnet.worker")

MAX_CURVE_POINTS = 500


class JobReporter:
    """A progress callback that writes to the job row at most every ``interval_s``.

    Every write doubles as the heartbeat and reads back the cancel flag, so a
    cancel takes effect at the first step after the next write.  Stage
    changes and metric records (one per epoch or check) are always written,
    and kept as loss curves for the dashboard; sample previews are handed to
    ``save_preview`` at most every ``preview_interval_s``.
    """

    def __init__(
        self,
        *,
        database_url: str,
        job_id: str,
        task: str,
        time_limit_s: float,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        cancelled: threading.Event | None = None,
        save_preview: Callable[[bytes], None] | None = None,
        preview_interval_s: float = 5.0,
        worker: str | None = None,
    ) -> None:
        self.database_url = database_url
        self.worker = worker  # progress is written only while this worker holds the job
        self.job_id = job_id
        self.task = task
        self.clock = clock
        self.deadline = clock() + time_limit_s
        self.interval_s = interval_s
        self.last_write = float("-inf")
        self.stage = ""
        self.curves: dict[str, list[dict[str, Any]]] = {}
        self.latest: dict[str, Any] = {}
        self.cancelled = cancelled or threading.Event()
        self.save_preview = save_preview
        self.preview_interval_s = preview_interval_s
        self.last_preview = float("-inf")
        self.preview_version = 0
        self.estimate_s: float | None = None

    def __call__(self, event: ProgressEvent) -> None:
        if self.cancelled.is_set():
            raise Cancelled()
        now = self.clock()
        if now > self.deadline:
            raise TimeLimitError(f"the job ran past its time limit in stage {event.stage}")
        has_metrics = bool(event.metrics)
        if has_metrics:
            point: dict[str, Any] = {"step": event.step, **{k: float(v) for k, v in event.metrics.items()}}
            if event.detail:
                point["detail"] = event.detail
            curve = self.curves.setdefault(event.stage, [])
            curve.append(point)
            if len(curve) > MAX_CURVE_POINTS:
                del curve[::2]  # keep the curve's shape, halve its points
            self.latest = {"stage": event.stage, "step": event.step, "total": event.total, **point}
        due = now - self.last_preview >= self.preview_interval_s
        if event.preview is not None and self.save_preview is not None and due:
            self.save_preview(event.preview)
            self.last_preview = now
            self.preview_version += 1
        stage_changed = event.stage != self.stage
        new_estimate = event.estimate_s is not None
        if new_estimate:
            self.estimate_s = event.estimate_s
        if not (stage_changed or has_metrics or new_estimate or now - self.last_write >= self.interval_s):
            return
        self.stage = event.stage
        self.last_write = now
        fraction = event.step / event.total if event.total else 0.0
        metrics = {
            "latest": self.latest,
            "curves": self.curves,
            "step": event.step,
            "total": event.total,
            "detail": event.detail,
            "preview_version": self.preview_version,
            "estimate_s": self.estimate_s,
        }
        try:
            with session_scope(self.database_url) as session:
                cancel = jobs.record_progress(
                    session,
                    job_id=self.job_id,
                    stage=event.stage,
                    progress=jobs.overall_progress(self.task, event.stage, fraction),
                    metrics=metrics,
                    worker=self.worker,
                )
        except Exception as exc:
            if not is_transient(exc):
                raise
            # The database is briefly away: the job goes on, the next write catches up.
            log.warning("progress of job %s not recorded: %s", self.job_id, exc)
            return
        if cancel:
            raise Cancelled()
