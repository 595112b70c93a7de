"""Dependencies of the routes, as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from api.errors import ApiError
from kegnet_service.errors import DatabaseUnavailable
from kegnet_service.keys import owner_of
from kegnet_service.settings import Settings
from kegnet_service.storage import LocalStore, S3Store


@dataclass
class Services:
    """What one app instance talks to; built once at start-up."""

    settings: Settings
    sessions: sessionmaker[Session]
    readers: sessionmaker[Session]  # autocommit, for the status poll's single SELECT
    store: LocalStore | S3Store
    celery: Celery


async def get_services(request: Request) -> Services:
    # async: a plain attribute read, not worth a trip to the thread pool
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_session(services: ServicesDep) -> Iterator[Session]:
    session = services.sessions()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


async def get_api_key(request: Request, services: ServicesDep) -> str | None:
    """The request's key (``Authorization: Bearer <key>``), None when auth is off.

    Only read here (no database); :func:`authenticate` checks it."""
    if not services.settings.auth:
        return None
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "unauthorized", "send an API key as 'Authorization: Bearer <key>'")
    return key.strip()


ApiKeyDep = Annotated[str | None, Depends(get_api_key)]


def authenticate(session: Session, key: str | None) -> str:
    """The owner of ``key`` (``anonymous`` when auth is off); 401 for an unknown or revoked key."""
    if key is None:
        return "anonymous"
    try:
        owner = owner_of(session, key)
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable() from exc
    if owner is None:
        raise ApiError(401, "unauthorized", "the API key is not valid")
    return owner


def get_owner(key: ApiKeyDep, services: ServicesDep) -> str:
    """The owner of the request's key, on a session of its own (closed before an upload streams)."""
    if key is None:
        return "anonymous"
    session = services.sessions()
    try:
        return authenticate(session, key)
    finally:
        session.close()


OwnerDep = Annotated[str, Depends(get_owner)]
