"""A terminal progress bar fed by the core's progress events.

On a terminal it redraws one line per stage; elsewhere (CI logs, pipes) it
writes a line when a stage starts and at every tenth of it.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

from kegnet_core.progress import ProgressEvent

SHOWN_METRICS = ("classifier_loss", "decoder_loss", "loss", "accuracy", "agreement")


class ProgressBar:
    """Callable progress callback that draws on ``stream`` (stderr by default)."""

    def __init__(self, stream: TextIO | None = None, min_interval: float = 0.1) -> None:
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.min_interval = min_interval
        self.stage = ""
        self.last_draw = 0.0
        self.last_tenth = -1
        self.metrics: dict[str, float] = {}

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage != self.stage:
            self._end_line()
            self.stage, self.last_tenth, self.metrics = event.stage, -1, {}
            if not self.interactive:
                self.stream.write(f"{event.stage}...\n")
        self.metrics.update({k: v for k, v in event.metrics.items() if k in SHOWN_METRICS})
        fraction = event.step / event.total if event.total else 0.0
        if self.interactive:
            now = time.monotonic()
            if now - self.last_draw >= self.min_interval or event.step >= event.total:
                self.last_draw = now
                self._draw(event, fraction)
        else:
            tenth = int(fraction * 10)
            if tenth > self.last_tenth and event.step > 0:
                self.last_tenth = tenth
                self.stream.write(f"  {event.stage} {event.step}/{event.total}{self._metric_text()}\n")
        self.stream.flush()

    def _metric_text(self) -> str:
        return "".join(f" {name}={value:.4g}" for name, value in self.metrics.items())

    def _draw(self, event: ProgressEvent, fraction: float) -> None:
        width = shutil.get_terminal_size((100, 20)).columns
        label = f"{event.stage:<11} {event.detail}".rstrip()
        tail = f" {fraction * 100:5.1f}% {event.step}/{event.total}{self._metric_text()}"
        bar_width = max(10, min(40, width - len(label) - len(tail) - 4))
        filled = int(bar_width * min(fraction, 1.0))
        line = f"{label} [{'#' * filled}{'.' * (bar_width - filled)}]{tail}"
        self.stream.write("\r" + line[: width - 1].ljust(width - 1))

    def _end_line(self) -> None:
        if self.interactive and self.stage:
            self.stream.write("\n")

    def close(self) -> None:
        self._end_line()
        self.stage = ""
        self.stream.flush()
