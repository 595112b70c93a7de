"""A terminal progress display fed by the core's progress events.

On a terminal, rich draws one bar per stage (with the stage's detail, its
latest metrics and the time left); elsewhere (CI logs, pipes) it writes a
line when a stage starts and at every tenth of it.
"""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from kegnet_core.progress import ProgressEvent

SHOWN_METRICS = ("classifier_loss", "decoder_loss", "loss", "accuracy", "agreement", "class_loss")


class ProgressBar:
    """Callable progress callback that draws on ``stream`` (stderr by default)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.stage = ""
        self.last_tenth = -1
        self.metrics: dict[str, float] = {}
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        if self.interactive:
            self.progress = Progress(
                TextColumn("{task.description:<11}"),
                BarColumn(bar_width=40),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[detail]}"),
                console=Console(file=self.stream),
                transient=False,
            )
            self.progress.start()

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage != self.stage:
            self.stage, self.last_tenth, self.metrics = event.stage, -1, {}
            if self.progress is not None:
                if self.task is not None:
                    self.progress.update(self.task, completed=self.progress.tasks[self.task].total)
                self.task = self.progress.add_task(event.stage, total=max(event.total, 1), detail="")
            else:
                self.stream.write(f"{event.stage}...\n")
        self.metrics.update({k: v for k, v in event.metrics.items() if k in SHOWN_METRICS})
        if self.progress is not None and self.task is not None:
            detail = " ".join(part for part in (event.detail, self._metric_text().strip()) if part)
            self.progress.update(self.task, total=max(event.total, 1), completed=event.step, detail=detail)
            return
        fraction = event.step / event.total if event.total else 0.0
        tenth = int(fraction * 10)
        if tenth > self.last_tenth and event.step > 0:
            self.last_tenth = tenth
            self.stream.write(f"  {event.stage} {event.step}/{event.total}{self._metric_text()}\n")
        self.stream.flush()

    def _metric_text(self) -> str:
        return "".join(f" {name}={value:.4g}" for name, value in self.metrics.items())

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        self.stage = ""
        self.stream.flush()
