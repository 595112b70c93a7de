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
    store: LocalStore | S3Store
    celery: Celery


def get_services(request: Request) -> Services:
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


def get_owner(request: Request, services: ServicesDep) -> str:
    """The owner of the request's API key (``Authorization: Bearer <key>``)."""
    if not services.settings.auth:
        return "anonymous"
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "unauthorized", "send an API key as 'Authorization: Bearer <key>'")
    session = services.sessions()
    try:
        owner = owner_of(session, key.strip())
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable() from exc
    finally:
        session.close()
    if owner is None:
        raise ApiError(401, "unauthorized", "the API key is not valid")
    return owner


OwnerDep = Annotated[str, Depends(get_owner)]
