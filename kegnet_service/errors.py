"""Domain errors of the service functions; the API maps each kind to one HTTP answer."""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service cannot carry out; ``status`` is the HTTP status it maps to."""

    status = 500
    code = "service_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class DatabaseUnavailable(ServiceError):
    status = 503
    code = "database_unavailable"

    def __init__(self, message: str = "the job database is unreachable; try again shortly") -> None:
        super().__init__(message)


class StoreUnavailable(ServiceError):
    status = 503
    code = "store_unavailable"

    def __init__(self, message: str = "the model store is unreachable; try again shortly") -> None:
        super().__init__(message)


class BrokerUnavailable(ServiceError):
    status = 503
    code = "broker_unavailable"

    def __init__(self, message: str = "the job queue is unreachable; try again shortly") -> None:
        super().__init__(message)


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class JobNotFound(ServiceError):
    status = 404
    code = "job_not_found"


class JobFinished(ServiceError):
    status = 409
    code = "job_finished"


class JobNotFinished(ServiceError):
    status = 409
    code = "job_not_finished"


class ArtifactNotFound(ServiceError):
    status = 404
    code = "artifact_not_found"
