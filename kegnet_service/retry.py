"""Retrying what a passing outage of the database or the store breaks, with exponential backoff."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError

from kegnet_service.storage import ObjectMissing, StoreError, StoreRefused

log = logging.getLogger("kegnet.retry")

T = TypeVar("T")


def is_transient(error: BaseException) -> bool:
    """An outage that may pass: a lost or refused database connection, an unreachable store.
    A missing object, a store's refusal, a constraint violation or a bug is not."""
    if isinstance(error, ObjectMissing | StoreRefused):
        return False
    if isinstance(error, StoreError | OperationalError):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


def with_retries(
    action: Callable[[], T],
    *,
    what: str,
    attempts: int = 6,
    first_delay_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``action()``, tried again after 0.5, 1, 2, 4, ... s while it fails with a transient error."""
    delay = first_delay_s
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            log.warning("%s failed (%s); retry %d of %d in %.1f s", what, exc, attempt, attempts - 1, delay)
            sleep(delay)
            delay *= 2
    raise AssertionError("not reached")
