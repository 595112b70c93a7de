"""The worker's Celery app, for ``celery -A worker.celery_app worker`` and ``kegnet worker``.

Nothing here imports torch: the pool's children import it when they run
their first job, so CUDA is never initialised in a parent before fork.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import setup_logging, worker_init

from kegnet_service.logs import configure_logging
from kegnet_service.queue import ensure_broker_folders, make_celery
from kegnet_service.settings import get_settings
from worker.tasks import register_tasks


@setup_logging.connect
def _logging(loglevel: str | int | None = None, **_kwargs: Any) -> None:
    """Our JSON/text logging instead of Celery's (connecting here stops Celery's own setup)."""
    configure_logging(loglevel or "INFO")


@worker_init.connect
def _broker_folders(**_kwargs: Any) -> None:
    """A worker started on its own (not by ``kegnet serve``) makes the local broker's folders."""
    ensure_broker_folders(get_settings())


def create_worker_app() -> Celery:
    app = make_celery(get_settings())
    register_tasks(app)
    return app


app = create_worker_app()
