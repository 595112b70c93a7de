"""``GET /metrics`` in Prometheus' text format.

Job figures (jobs by status, queue depth, stage durations) are read from the
job store at scrape time, so every API replica reports the same truth and no
worker has to push anything.  Request latency and upload sizes are counted in
this process.  Each app has its own registry (no global state).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kegnet_service.models import Job
from kegnet_service.states import JOB_STATUSES

STAGE_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600, 3 * 3600, 12 * 3600)
RECENT_JOBS = 500


class JobStoreCollector:
    """Jobs by status, queue depth, and stage durations of recent jobs, from the database."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        session = self.sessions()
        try:
            counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            reports = session.scalars(
                select(Job.report)
                .where(Job.status == "succeeded")
                .order_by(Job.finished_at.desc())
                .limit(RECENT_JOBS)
            ).all()
        except Exception:
            return  # the database is away; /readyz says so, metrics just go quiet
        finally:
            session.close()
        by_status = GaugeMetricFamily("kegnet_jobs", "Jobs in the store, by status", labels=["status"])
        for status in JOB_STATUSES:
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status
        yield GaugeMetricFamily(
            "kegnet_queue_depth", "Jobs waiting for a worker", value=counts.get("queued", 0)
        )
        yield _stage_histogram(reports)


def _stage_histogram(reports: Any) -> HistogramMetricFamily:
    family = HistogramMetricFamily(
        "kegnet_stage_duration_seconds",
        f"Wall time of each stage over the last {RECENT_JOBS} succeeded jobs",
        labels=["stage"],
    )
    durations: dict[str, list[float]] = {}
    for report in reports:
        for stage, seconds in ((report or {}).get("timings_s") or {}).items():
            if stage != "total":
                durations.setdefault(stage, []).append(float(seconds))
    for stage, values in sorted(durations.items()):
        buckets = [(str(edge), sum(1 for value in values if value <= edge)) for edge in STAGE_BUCKETS]
        buckets.append(("+Inf", len(values)))
        family.add_metric([stage], buckets, sum_value=sum(values))
    return family


class ApiMetrics:
    """The app's registry: request latency, upload sizes and the job-store collector."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "kegnet_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.upload_bytes = Histogram(
            "kegnet_upload_bytes",
            "Sizes of accepted model uploads",
            buckets=(1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10),
            registry=self.registry,
        )
        self.registry.register(JobStoreCollector(sessions))

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class TimeRequests:
    """Pure ASGI middleware: time every HTTP request by route template and status.

    (Starlette's ``@app.middleware("http")`` wraps each request in extra tasks and
    streams; at a few hundred polls a second that overhead is most of a request.)"""

    def __init__(self, app: ASGIApp, get_metrics: Callable[[], ApiMetrics | None]) -> None:
        self.app = app
        self.get_metrics = get_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            metrics = self.get_metrics()
            route = scope.get("route")
            if metrics is not None and route is not None:
                metrics.latency.labels(scope["method"], getattr(route, "path", "?"), str(status)).observe(
                    time.perf_counter() - started
                )


def install_metrics(app: FastAPI, get_metrics: Callable[[], ApiMetrics | None]) -> None:
    """Time every request (by route template) and serve ``/metrics``."""
    app.add_middleware(TimeRequests, get_metrics=get_metrics)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        current = get_metrics()
        if current is None:
            return Response("metrics are not ready\n", status_code=503, media_type="text/plain")
        return current.render()
