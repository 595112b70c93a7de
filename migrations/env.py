"""Alembic environment: runs migrations on the URL the config names."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from kegnet_service.models import Base
from migrations import _driver_url

config = context.config
target_metadata = Base.metadata


def run_offline() -> None:
    context.configure(
        url=_driver_url(config.get_main_option("sqlalchemy.url") or ""), target_metadata=target_metadata
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = create_engine(
        _driver_url(config.get_main_option("sqlalchemy.url") or ""), poolclass=pool.NullPool
    )
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
