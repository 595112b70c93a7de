"""Errors the core raises for problems with the user's input.

Each carries a stable machine-readable ``code`` so the service can put it in a
failed job's ``error.code`` without parsing messages.  This module imports
nothing heavy, so the API may use it too.
"""

from __future__ import annotations


class KegnetError(Exception):
    """Base class: a problem with the user's model or request, not a bug."""

    code = "kegnet_error"
    default_field: str | None = None

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field if field is not None else self.default_field


class InvalidModelFileError(KegnetError):
    """The uploaded file is not a usable TorchScript archive."""

    code = "invalid_model_file"
    default_field = "model"


class UnsupportedModelError(KegnetError):
    """The file is TorchScript, but uses something we cannot rewrite."""

    code = "unsupported_model"
    default_field = "model"


class ModelRunError(KegnetError):
    """The model fails, or gives unusable outputs, on the declared input shape."""

    code = "model_run_failed"
    default_field = "input_shape"


class SpecError(KegnetError):
    """A compression spec that cannot apply to this model (names ``field``)."""

    code = "invalid_spec"


class TimeLimitError(KegnetError):
    """The whole job ran past the wall-clock or CPU time it was given."""

    code = "time_limit"


class Cancelled(Exception):
    """Raised from a progress callback to stop a run at the next step."""
