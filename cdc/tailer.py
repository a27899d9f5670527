"""The change-stream tailer: outbox inserts -> Kafka, checkpointed after acknowledgement, nothing lost.

`Tailer` runs one `OutboxTailer` (cdc/outbox_tailer.py) per outbox, each in its own thread, in one process
(`cdcflow tail`, or in-process from tests and the benchmarks), plus the pruner that deletes what retention
allows (cdc/pruner.py). A session of one outbox (cdc/session.py) reads its change stream, forwards and
checkpoints.

The process is supervised from here: a thread that dies of an error nobody handles (a bug, not a store being
away) stops everything and `run()` returns exit code 1, so that a supervisor restarts the process. A stop
(SIGTERM) ends every thread within `tailer_stop_timeout_seconds`: each outbox sends what it read, checkpoints
what Kafka acknowledged before the deadline and releases its lease; what was still in flight is sent again by
the next tailer (at-least-once).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pymongo import MongoClient

from cdc.lease import default_instance_id
from cdc.logs import get_logger
from cdc.metrics import serve_metrics
from cdc.mongo import mongo_client
from cdc.outbox_tailer import OutboxTailer, Reset, timestamp_of
from cdc.pruner import Pruner
from cdc.publisher import AckHook
from cdc.session import PIPELINE
from cdc.settings import Settings

Document = dict[str, Any]

__all__ = ["PIPELINE", "Reset", "Tailer", "timestamp_of"]

# What a stop keeps for itself after the outboxes' deadline: joining threads, closing the client.
_STOP_RESERVE_SECONDS = 1.0


class Tailer:
    """All configured outboxes, one thread each; `run()` blocks until `request_stop()` (SIGTERM: CLI)."""

    def __init__(
        self,
        settings: Settings,
        databases: Sequence[str] | None = None,
        *,
        client: MongoClient[Document] | None = None,
        reset: Reset | None = None,
        on_ack: AckHook | None = None,
        instance_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.databases = list(databases if databases is not None else settings.tailer_databases)
        self._own_client = client is None
        self.client = client or mongo_client(settings)
        self.stop_event = threading.Event()
        self.instance_id = instance_id or settings.tailer_instance_id or default_instance_id()
        #: Why the tailer stopped on its own (a thread died), or None.
        self.crashed: str | None = None
        self._stop_deadline: float | None = None
        self.outboxes = [
            OutboxTailer(settings, self.client, db, stop=self.stop_event, stop_deadline=self.stop_deadline,
                         instance_id=self.instance_id, reset=reset, on_ack=on_ack, on_crash=self._crash)
            for db in self.databases
        ]
        self.pruner = Pruner(settings, [o.outbox for o in self.outboxes], self.stop_event)
        self._threads: list[threading.Thread] = []
        self.log = get_logger("cdc.tailer", instance=self.instance_id)

    def stop_deadline(self) -> float | None:
        """Monotonic time by which every outbox must have stopped, once a stop was requested."""
        return self._stop_deadline

    def start(self) -> Tailer:
        serve_metrics(self.settings.tailer_metrics_port)
        self.log.info("tailer starting", outboxes=[o.key for o in self.outboxes])
        targets: list[tuple[str, Callable[[], None]]] = [(f"tail-{o.key}", o.run) for o in self.outboxes]
        targets.append(("outbox-pruner", self.pruner.run))
        for name, target in targets:
            thread = threading.Thread(target=self._guard(name, target), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _guard(self, name: str, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:
                self._crash(name, exc)

        return run

    def _crash(self, name: str, exc: BaseException) -> None:
        self.log.error("tailer thread died; stopping the tailer", thread=name, error=repr(exc),
                       exc_info=(type(exc), exc, exc.__traceback__))
        if self.crashed is None:
            self.crashed = f"{name}: {exc!r}"
        self.request_stop()

    def request_stop(self) -> None:
        """Ask every thread to stop, within `tailer_stop_timeout_seconds` from now."""
        if self._stop_deadline is None:
            self._stop_deadline = (time.monotonic() + self.settings.tailer_stop_timeout_seconds
                                   - _STOP_RESERVE_SECONDS)
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the threads; True when all of them ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def stop(self, timeout: float | None = None) -> bool:
        """Stop (drain, checkpoint, release the leases) and wait; True on a clean stop within the bound."""
        self.request_stop()
        done = self.join(timeout if timeout is not None else self.settings.tailer_stop_timeout_seconds)
        if self._own_client:
            self.client.close()
        return done

    def run(self) -> int:
        """Start and block until stopped; the process exit code: 0 after a clean stop, 1 otherwise."""
        self.start()
        while not self.stop_event.wait(0.5):
            pass
        deadline = self._stop_deadline
        assert deadline is not None  # request_stop() set it before the event
        clean = self.join(max(0.0, deadline + _STOP_RESERVE_SECONDS - time.monotonic()))
        if not clean:
            alive = [t.name for t in self._threads if t.is_alive()]
            self.log.error("tailer did not stop in time; exiting anyway", still_running=alive,
                           bound_seconds=self.settings.tailer_stop_timeout_seconds)
        if self._own_client:
            self.client.close()
        if self.crashed is not None:
            self.log.error("tailer stopped after a failure", reason=self.crashed)
            return 1
        return 0 if clean else 1

    def __enter__(self) -> Tailer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
