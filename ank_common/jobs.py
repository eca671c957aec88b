"""A worker thread that runs the jobs submitted to it one at a time, in the
order they came: what the agent's runtime workers and each Control Interface
channel hand their blocking work to (a failing job is logged; the next runs)."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable


class JobQueue:
    def __init__(self, name: str, failure: str, log: logging.Logger) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._failure = failure  # logged with the traceback when a job raises
        self._log = log
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def close(self) -> None:
        """No job after those already submitted (they still run)."""
        self._jobs.put(None)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:
                self._log.exception(self._failure)
