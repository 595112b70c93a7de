"""Progress reporting: the core calls back, the caller decides what it becomes.

A progress bar in the CLI, throttled row updates in the worker, nothing in a
test.  A callback may raise :class:`kegnet_core.errors.Cancelled` to stop the
run at the step it is told about.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from kegnet_core.spec import Stage

STAGES = tuple(stage.value for stage in Stage)  # in the order they run


@dataclass(frozen=True)
class ProgressEvent:
    """One step of one stage; ``metrics`` are the losses or scores at that step.

    ``preview`` is a PNG of what the generator draws now (one row per class),
    sent at the end of each extraction epoch when the caller asks for previews.
    ``estimate_s`` is a time budget's estimate of the whole job's duration, sent once after
    its warm-up.
    """

    stage: str
    step: int
    total: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    detail: str = ""
    preview: bytes | None = None
    estimate_s: float | None = None


ProgressCallback = Callable[[ProgressEvent], None]


def ignore_progress(event: ProgressEvent) -> None:
    """The callback that does nothing."""
