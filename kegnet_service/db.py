"""Engines and sessions for the job store, SQLite and Postgres alike."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # API and worker write concurrently
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


# Connections kept open per process.  The API answers on up to 40 threads (anyio's default);
# with fewer pooled connections than concurrent requests, every request past the pool opens
# and closes a connection of its own, which under a few hundred polls a second was most of
# a poll's time.
POOL_SIZE = 16
POOL_OVERFLOW = 24


@lru_cache(maxsize=8)
def get_engine(url: str, *, reads: bool = False) -> Engine:
    """One engine per URL (and kind) per process (engines are not shared across fork).

    ``reads``: an engine for single-statement reads on hot paths.  Its connections run in
    autocommit (no BEGIN and ROLLBACK round trips around the one SELECT) and are not pinged
    before use: after a database restart, SQLAlchemy sees the first failed statement as a
    disconnect, answers it with an error (a 503) and replaces the whole pool."""
    isolation = {"isolation_level": "AUTOCOMMIT"} if reads else {}
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 10},
            pool_size=POOL_SIZE,
            max_overflow=POOL_OVERFLOW,
            **isolation,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return create_engine(
        url, pool_pre_ping=not reads, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW, **isolation
    )


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


def read_session_factory(url: str) -> sessionmaker[Session]:
    """Sessions for one-statement reads that change nothing (see ``get_engine(reads=True)``)."""
    return sessionmaker(get_engine(url, reads=True), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def ping(url: str) -> None:
    """Raise if the database cannot answer a trivial query."""
    with get_engine(url).connect() as connection:
        connection.execute(text("SELECT 1"))
