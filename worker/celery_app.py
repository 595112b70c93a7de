"""The worker's Celery app, for ``celery -A worker.celery_app worker`` and ``kegnet worker``.

Nothing here imports torch: the pool's children import it when they run
their first job, so CUDA is never initialised in a parent before fork.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import setup_logging

from kegnet_service.logs import configure_logging
from kegnet_service.queue import make_celery
from kegnet_service.settings import get_settings
from worker.tasks import register_tasks


@setup_logging.connect
def _logging(loglevel: str | None = None, **_kwargs: Any) -> None:
    """Our JSON/text logging instead of Celery's (connecting here stops Celery's own setup)."""
    configure_logging(loglevel or "INFO")


def create_worker_app() -> Celery:
    app = make_celery(get_settings())
    register_tasks(app)
    return app


app = create_worker_app()
