"""The in-process worker of ``evalsvc serve``: a background thread that drains pending work.

Ingest wakes it (``submit_*``); it also wakes every ``poll_seconds`` to pick up action retries
whose backoff has passed and anything a crashed process left pending.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from sqlalchemy.engine import Engine

from evalsvc.settings import Settings

from .runner import drain

__all__ = ["InProcessWorker"]

logger = logging.getLogger(__name__)


class InProcessWorker:
    def __init__(self, *, engine: Engine, settings: Settings, poll_seconds: float = 1.0) -> None:
        self.engine, self.settings, self.poll_seconds = engine, settings, poll_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="evalsvc-worker", daemon=True)
        self._thread.start()
        self._wake.set()  # recover what a previous process left pending

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)

    def submit_scores(self, ids: Sequence[int]) -> None:
        self._idle.clear()
        self._wake.set()

    def submit_actions(self, ids: Sequence[int]) -> None:
        self._idle.clear()
        self._wake.set()

    def submit_final_runs(self) -> None:  # each drain looks for final runs
        self._idle.clear()
        self._wake.set()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until the worker has drained what was submitted (for tests and the demo)."""
        return self._idle.wait(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            try:
                drain(engine=self.engine, settings=self.settings)
            except Exception:
                logger.exception("in-process worker pass failed; retrying on the next wake")
            if not self._wake.is_set():
                self._idle.set()
