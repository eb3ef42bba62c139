"""The live side of the Celery connector: consume a Celery app's task events from its broker.

A background thread runs Celery's own event receiver (``celery.events.EventReceiver``, what
``celery events`` and Flower use) on the broker, reconnecting with exponential backoff whenever the
broker goes away; the caller iterates over :meth:`CeleryEventStream.batches`, which yields what
arrived every ``flush_seconds`` (or sooner, at ``max_events``), with notes about the connection.
Nothing here touches the store: :class:`connectors.celery_events.CeleryEventFolder` turns the
events into step records and evalsvc stores them.

Celery publishes events on a fanout exchange (Redis: PUBLISH/SUBSCRIBE), so events sent while no
receiver is connected are not kept by the broker; the workers buffer theirs while *they* are
disconnected and send them once the broker is back.

    >>> from connectors.celery_listen import CeleryEventStream  # doctest: +SKIP
    >>> stream = CeleryEventStream("redis://127.0.0.1:6379/0")  # doctest: +SKIP
    >>> for batch in stream.batches(max_events=500, flush_seconds=1.0):  # doctest: +SKIP
    ...     print(len(batch.events), batch.notes)  # call stream.stop() to end the loop
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery.events.receiver import EventReceiver
from kombu.utils.url import maybe_sanitize_url

__all__ = ["Batch", "CeleryEventStream"]

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """Task events in arrival order, and what happened to the connection meanwhile."""

    events: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    connected: bool = False  # whether a receiver was consuming when the batch was cut
    final: bool = False  # the stream has stopped; nothing follows


@dataclass
class _Note:
    text: str
    connected: bool


_STOPPED = object()


class _Receiver(EventReceiver):  # type: ignore[misc]  # celery is untyped
    """Celery's receiver, connecting once per call (the stream does the backoff) and keeping the
    events' timestamps as the workers sent them (epoch seconds; no re-basing to our UTC offset)."""

    connect_max_retries = 1

    def __init__(self, *args: Any, on_ready: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_ready = on_ready

    def on_consume_ready(self, connection: Any, channel: Any, consumers: Any, **kwargs: Any) -> None:
        super().on_consume_ready(connection, channel, consumers, **kwargs)
        self._on_ready()

    def on_connection_error(self, exc: BaseException, interval: float) -> None:
        pass  # reported by the stream, which retries

    def event_from_message(self, body: Any, localize: bool = True, **kwargs: Any) -> Any:
        return super().event_from_message(body, localize=False, **kwargs)


class CeleryEventStream:
    """Task events from a Celery broker, live, across broker restarts.

    ``backoff`` is the first delay after a failed connection; it doubles up to ``backoff_max`` and
    starts over once a receiver is consuming again.
    """

    def __init__(
        self,
        broker_url: str,
        *,
        backoff: float = 0.5,
        backoff_max: float = 30.0,
        connect_timeout: float = 4.0,
        wakeup: bool = True,
    ) -> None:
        self.broker_url = broker_url
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.wakeup = wakeup
        self.app = Celery("evalsvc-listen", broker=broker_url, set_as_current=False)
        self.app.conf.update(broker_connection_timeout=connect_timeout, broker_connection_retry=False)
        self.received = 0
        self.connections = 0
        self._delay = backoff
        self._queue: queue.Queue[object] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._receiver: _Receiver | None = None

    # ---- the receiving thread -----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="celery-events", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Ask the stream to end: the receiver stops within a second and the last batch follows.
        Safe to call from a signal handler."""
        self._stop.set()
        receiver = self._receiver
        if receiver is not None:
            receiver.should_stop = True

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if isinstance(kind, str) and kind.startswith("task-"):
            self.received += 1
            self._queue.put(event)

    def _on_ready(self) -> None:
        self.connections += 1
        self._delay = self.backoff
        verb = "connected to" if self.connections == 1 else "reconnected to"
        self._queue.put(_Note(f"{verb} {maybe_sanitize_url(self.broker_url)}", connected=True))

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    with self.app.connection_for_read() as conn:
                        self._receiver = _Receiver(conn, handlers={"*": self._on_event}, app=self.app,
                                                   on_ready=self._on_ready)  # fmt: skip
                        if self._stop.is_set():
                            break
                        self._receiver.capture(limit=None, timeout=None, wakeup=self.wakeup)
                except Exception as exc:  # broker down or gone: any error of the transport
                    if self._stop.is_set():
                        break
                    delay = self._delay
                    self._delay = min(self._delay * 2, self.backoff_max)
                    logger.debug("celery event receiver failed", exc_info=True)
                    self._queue.put(
                        _Note(f"broker unavailable ({type(exc).__name__}: {exc}); retrying in {delay:.1f}s", False)
                    )
                    self._stop.wait(delay)
                finally:
                    self._receiver = None
        finally:
            self._queue.put(_STOPPED)

    # ---- the consuming side -------------------------------------------------------------------

    def batches(self, *, max_events: int = 500, flush_seconds: float = 1.0) -> Iterator[Batch]:
        """Start receiving and yield a batch at least every ``flush_seconds`` (possibly empty, so
        the caller can check its own clock), or as soon as ``max_events`` are waiting. After
        :meth:`stop`, the events received so far come in one last batch with ``final`` set."""
        if max_events < 1 or flush_seconds <= 0:
            raise ValueError("max_events must be at least 1 and flush_seconds positive")
        self.start()
        connected = False
        batch = Batch()
        deadline = time.monotonic() + flush_seconds
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _STOPPED:
                batch.connected, batch.final = False, True
                yield batch
                return
            if isinstance(item, _Note):
                batch.notes.append(item.text)
                connected = item.connected
            elif isinstance(item, dict):
                batch.events.append(item)
            if len(batch.events) >= max_events or time.monotonic() >= deadline:
                batch.connected = connected
                yield batch
                batch = Batch()
                deadline = time.monotonic() + flush_seconds

    def close(self) -> None:
        """Stop and wait for the receiving thread."""
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.app.close()
