"""The FastAPI application: ``create_app()`` builds one from settings."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import SQLAlchemyError

from api.dashboard import install_dashboard
from api.deps import Services
from api.errors import install_error_handlers
from api.metrics import ApiMetrics, install_metrics
from api.routes import router
from kegnet_core.spec import CompressionSpec
from kegnet_service.db import read_session_factory, session_factory, session_scope
from kegnet_service.keys import seed_keys
from kegnet_service.queue import ensure_broker_folders, make_celery
from kegnet_service.settings import Settings, get_settings
from kegnet_service.storage import settings_store

log = logging.getLogger("kegnet.api")

DESCRIPTION = """
Compress a trained classifier **without its training data**.

Upload a TorchScript classifier with `POST /v1/jobs`; a worker extracts the
model's knowledge into generator networks (KegNet), replaces layers by their
Tucker factors and distills the smaller student on generated samples. Poll
`GET /v1/jobs/{id}` and download the student from `GET /v1/jobs/{id}/model`.

Every `/v1` call needs `Authorization: Bearer <API key>`.
"""


def build_services(settings: Settings) -> Services:
    return Services(
        settings=settings,
        sessions=session_factory(settings.resolved_database_url),
        readers=read_session_factory(settings.resolved_database_url),
        store=settings_store(settings),
        celery=make_celery(settings),
    )


def _seed_keys(settings: Settings) -> bool:
    """Store the keys of ``KEGNET_API_KEYS``; False while the database is away."""
    if not settings.api_keys:
        return True
    try:
        with session_scope(settings.resolved_database_url) as session:
            seed_keys(session, settings.api_keys)
    except SQLAlchemyError:
        log.warning("could not seed API keys yet; the database is unreachable")
        return False
    return True


async def _background(services: Services, keys_seeded: bool) -> None:
    """Seed the configured keys once the database is up.  (Reaping is not the API's: one reaper
    runs per deployment, ``kegnet reaper``.)"""
    interval = max(services.settings.heartbeat_interval_s, 1.0)
    while not keys_seeded:
        await asyncio.sleep(interval)
        keys_seeded = await run_in_threadpool(_seed_keys, services.settings)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings)
        settings.home.mkdir(parents=True, exist_ok=True)
        ensure_broker_folders(settings)
        keys_seeded = await run_in_threadpool(_seed_keys, settings)
        app.state.services = services
        app.state.metrics = ApiMetrics(services.sessions)
        reaper = asyncio.create_task(_background(services, keys_seeded))
        # What start-up built lives as long as the process: keep it out of the garbage
        # collector's full passes, which otherwise stall every request for tens of ms.
        gc.collect()
        gc.freeze()
        yield
        reaper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reaper

    app = FastAPI(
        title="kegnet",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served from local files by install_dashboard: no CDN
        redoc_url=None,
    )
    install_error_handlers(app)
    app.include_router(router)
    install_dashboard(app)
    install_metrics(app, lambda: getattr(app.state, "metrics", None))
    _document_spec(app)
    return app


def _document_spec(app: FastAPI) -> None:
    """The spec travels as a JSON string in the form; publish its schema too."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            spec_schema = CompressionSpec.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {})
            known = components.setdefault("schemas", {})
            known.update(spec_schema.pop("$defs", {}))  # the enums (Prior, PresetName, Task, ...)
            known["CompressionSpec"] = spec_schema
            components["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
            for path, operations in schema.get("paths", {}).items():
                if path.startswith("/v1/"):
                    for operation in operations.values():
                        operation["security"] = [{"apiKey": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
