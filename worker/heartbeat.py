"""A thread that keeps a running job's heartbeat fresh, whatever the job is doing.

Progress events can be minutes apart (loading a big model, a long Tucker
decomposition, measuring latency), so the heartbeat does not wait for them.
It also reads the cancel flag, so a cancel is seen within one interval even
while progress writes are throttled.  When the process dies, so does the
thread, and the reaper notices the silence.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from kegnet_service import jobs
from kegnet_service.db import session_scope

log = logging.getLogger("kegnet.worker")


class Heartbeat:
    def __init__(self, database_url: str, job_id: str, interval_s: float, worker: str | None = None) -> None:
        self.database_url = database_url
        self.job_id = job_id
        self.worker = worker
        self.interval_s = interval_s
        self.cancelled = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                with session_scope(self.database_url) as session:
                    if jobs.beat(session, job_id=self.job_id, worker=self.worker):
                        self.cancelled.set()
            except Exception:  # the database may be briefly away; the next beat retries
                log.warning("heartbeat for job %s failed", self.job_id, exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5)
