"""One outbox's tailer: standby until its lease is ours, then sessions (cdc/session.py) until the lease is lost
or the process stops.

A session that fails is followed by a new one from the checkpoint, after a backoff (cdc/retry.py) that starts
over once a session has run healthily for a while. Errors of the stores (MongoDB, Kafka, the fetcher) are
retried for as long as the process runs; anything else is a bug and ends the thread, which ends the process
(cdc/tailer.py) with a non-zero exit code so that a supervisor restarts it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson.timestamp import Timestamp
from confluent_kafka import KafkaException
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from cdc.checkpoint import CheckpointStore, FencedError
from cdc.dead_letters import DeadLetterStore
from cdc.errors import CdcError
from cdc.lease import Lease
from cdc.logs import get_logger
from cdc.metrics import RESTARTS
from cdc.mongo import client_options
from cdc.publisher import AckHook, DeliveryError
from cdc.retry import Backoff
from cdc.session import LeaseLost, Outbox, Reopen, Session, StreamLost, short
from cdc.settings import Settings
from cdc.stream_reader import Fetcher

Document = dict[str, Any]


@dataclass(frozen=True)
class Reset:
    """`cdcflow tail --reset`: restart from `start_at` (a point in time) or, if None, the catch-up scan; the
    catch-up scan then starts at `scan_from` when given."""

    start_at: Timestamp | None = None
    scan_from: datetime | None = None


def timestamp_of(when: datetime) -> Timestamp:
    """A cluster time for `start_at_operation_time` from a UTC datetime (whole seconds, rounded down)."""
    return Timestamp(int(when.timestamp()), 0)


# A session that ran this long without failing was healthy: the next failure waits the shortest delay again.
HEALTHY_SESSION_SECONDS = 30.0


class OutboxTailer:
    """Tails one outbox collection (under its lease) until `stop` is set."""

    def __init__(
        self,
        settings: Settings,
        client: MongoClient[Document],
        database: str,
        *,
        stop: threading.Event,
        stop_deadline: Callable[[], float | None],
        instance_id: str,
        reset: Reset | None = None,
        on_ack: AckHook | None = None,
        on_crash: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.settings = settings
        self.database = database
        self.key = f"{database}.{settings.tailer_collection}"
        collection = client[database][settings.tailer_collection]
        state = client[settings.tailer_state_database]
        lease = Lease(state["leases"], self.key, instance_id, settings.tailer_lease_ttl_seconds,
                      on_crash=on_crash)
        # The stream's getMores run in a process of their own (see cdc.fetcher), which outlives sessions.
        fetcher = Fetcher(settings.mongo_uri, client_options(settings), name=self.key)
        self.outbox = Outbox(
            settings, self.key, collection, CheckpointStore(state["checkpoints"]),
            DeadLetterStore(state["dead_letters"]), lease, fetcher, stop.is_set, stop_deadline, on_ack,
        )
        self.stop = stop
        self.reset = reset
        self.log = get_logger("cdc.tailer", outbox=self.key)
        self._forwarded_before = 0  # by the sessions that ended
        self._catchups_before = 0
        self.sessions = 0
        self.session: Session | None = None
        # After a drop/rename/invalidate the checkpoint's token would replay the same end: catch up instead.
        self._force_catchup = False

    @property
    def forwarded(self) -> int:
        """Events Kafka acknowledged since this tailer started (all sessions)."""
        session = self.session
        return self._forwarded_before + (session.forwarded if session is not None else 0)

    @property
    def catchups(self) -> int:
        """Catch-up scans completed since this tailer started."""
        session = self.session
        return self._catchups_before + (1 if session is not None and session.caught_up else 0)

    @property
    def lease(self) -> Lease:
        return self.outbox.lease

    @property
    def store(self) -> CheckpointStore:
        return self.outbox.store

    @property
    def fetcher_pid(self) -> int | None:
        """The pid of this outbox's change-stream fetcher process, while it runs."""
        return self.outbox.fetcher.pid

    # -- leadership -------------------------------------------------------------------------------------

    def run(self) -> None:
        """Standby until the lease is ours, lead until it is lost or `stop` is set; repeat."""
        try:
            self.outbox.fetcher.start()
            self._run()
        finally:
            deadline = self.outbox.stop_deadline()
            self.outbox.fetcher.stop(timeout=5.0 if deadline is None else max(0.5, deadline - time.monotonic()))

    def _run(self) -> None:
        backoff = Backoff()
        lease = self.lease
        while not self.stop.is_set():
            try:
                acquired = lease.try_acquire()
            except PyMongoError as exc:
                self.log.warning("lease_check_failed", error=short(exc))
                self.stop.wait(backoff.next())
                continue
            backoff.reset()
            if not acquired:
                self.stop.wait(min(1.0, self.settings.tailer_lease_ttl_seconds / 3))
                continue
            crashed = True
            try:
                lease.start_heartbeat()
                self._lead()
                crashed = False
            except (PyMongoError, FencedError) as exc:
                crashed = False
                self.log.warning("leadership_interrupted", error=short(exc))
                self.stop.wait(backoff.next())
            finally:
                if self.stop.is_set() or crashed:  # stopping, or dying: a standby may take over right away
                    deadline = self.outbox.stop_deadline()
                    lease.release(2.0 if deadline is None else min(2.0, deadline - time.monotonic()))
                else:
                    lease.stop_heartbeat()

    def _lead(self) -> None:
        backoff = Backoff()
        while not self.stop.is_set():
            if not self.lease.held:
                self.log.warning("lease_lost_stepping_down")
                return
            fence = self.lease.fence
            if fence is None:
                return
            number = self.store.begin_session(self.key, fence)
            self._apply_reset(fence)
            self.sessions += 1
            session = self.session = Session(self.outbox, number, force_catchup=self._force_catchup)
            started = time.monotonic()
            try:
                session.run()
                backoff.reset()
            except (LeaseLost, FencedError) as exc:
                self.log.warning("lease_lost_stepping_down", reason=str(exc))
                return
            except Reopen:
                RESTARTS.labels(self.key, "reopen").inc()
                continue
            except StreamLost as exc:
                self.log.warning("change_stream_ended_rescanning", reason=str(exc))
                self._force_catchup = True
                continue
            except (PyMongoError, KafkaException, DeliveryError, CdcError) as exc:
                RESTARTS.labels(self.key, "error").inc()
                if time.monotonic() - started >= HEALTHY_SESSION_SECONDS:
                    backoff.reset()
                delay = backoff.next()
                self.log.warning("tailer_session_failed", error=short(exc),
                                 error_type=type(exc).__name__, retry_in=round(delay, 2))
                self.stop.wait(delay)
            finally:
                self._forwarded_before += session.forwarded
                if session.caught_up:
                    self._catchups_before += 1
                    self._force_catchup = False
                self.session = None

    def _apply_reset(self, fence: int) -> None:
        if self.reset is None:
            return
        self.store.reset(self.key, fence, self.reset.start_at, self.reset.scan_from)
        self.log.warning(
            "checkpoint_reset_by_operator",
            start_at=str(self.reset.start_at) if self.reset.start_at else "catch-up scan",
            scan_from=str(self.reset.scan_from) if self.reset.scan_from else "from the checkpoint",
        )
        self.reset = None
