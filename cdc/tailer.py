"""The change-stream tailer: outbox inserts -> Kafka, checkpointed after acknowledgement, nothing lost.

One `OutboxTailer` per outbox (`<db>.outbox`), each in its own thread, under a `Tailer` that runs them all
in one process (`cdcflow tail`, or in-process from tests and the benchmark). For each outbox:

1. take the lease (or wait as standby); stamp our fencing token on the checkpoint;
2. open a change stream filtered on the server to inserts (plus the lifecycle events that end a stream), from
   the checkpoint's resume token, or from an operator's point in time; with no usable checkpoint (none,
   invalid, history lost, invalidated) open a fresh stream first and run the catch-up scan of unpublished
   events, then continue with the stream;
3. forward each event (key = aggregate_id) without waiting, tracking acknowledgements in stream order;
   every commit interval mark the acknowledged prefix published and checkpoint its last resume token; an
   idle stream checkpoints its post-batch resume token on a heartbeat;
4. any failure (MongoDB, Kafka, a delivery error) ends the session: the next one resumes from the
   checkpoint, with back-off. Losing the lease ends leadership; SIGTERM flushes, checkpoints and returns.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import json_util
from bson.timestamp import Timestamp
from confluent_kafka import KafkaException
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import OperationFailure, PyMongoError

from cdc.catchup import catch_up
from cdc.checkpoint import Checkpoint, CheckpointStore, FencedError
from cdc.errors import CdcError, InvalidEventError
from cdc.event import H_EVENT_ID, Event
from cdc.lease import Lease, default_instance_id
from cdc.logs import get_logger
from cdc.metrics import (
    BACKLOG,
    BATCH_SIZE,
    CHECKPOINT_AGE,
    EVENTS,
    IN_FLIGHT,
    LATENCY,
    RESTARTS,
    serve_metrics,
)
from cdc.mongo import client_options, mongo_client
from cdc.outbox import backlog, mark_published
from cdc.publisher import AckHook, DeliveryError, InFlight, Publisher, Sent
from cdc.schemas import dlq_topic
from cdc.settings import Settings
from cdc.stream_reader import Change, ChangeReader, Ended, Fetcher, Idle, RemoteStream

Document = dict[str, Any]

# Stream lifecycle events that end a collection's stream; all other non-insert changes (the tailer's own
# `published` updates, deletes by the TTL index) are filtered out on the server.
LIFECYCLE_OPS = ("drop", "rename", "dropDatabase", "invalidate")
PIPELINE: list[Document] = [{"$match": {"operationType": {"$in": ["insert", *LIFECYCLE_OPS]}}}]

# Server errors that mean "this resume point is unusable": history lost, fatal stream error, invalid token
# (bad value, cannot parse, resume from an invalidate), a token of another namespace (SecantusDB: 13).
UNRESUMABLE_CODES = frozenset({286, 280, 260, 9, 2, 13, 136})


# A change read more than this long after its commit means a backlog is draining (also without wallTime: a
# batch of at least _BACKLOG_CHUNK changes); marking published and checkpointing wait meanwhile.
_BACKLOG_LAG_SECONDS = 0.5
_BACKLOG_CHUNK = 500
# How long after the last sign of a backlog the tailer still counts as draining.
_BACKLOG_WINDOW_SECONDS = 0.5


class StreamLost(CdcError):
    """The change stream cannot go on (invalidated, dropped, renamed): restart with the catch-up scan."""


class _Reopen(CdcError):
    """Re-open the stream from the checkpoint (after a long wait on Kafka)."""


class _LeaseLost(CdcError):
    """The lease ran out or was taken over: stop leading."""


@dataclass(frozen=True)
class Reset:
    """`cdcflow tail --reset`: restart from `start_at` (a point in time) or, if None, the catch-up scan."""

    start_at: Timestamp | None = None


def timestamp_of(when: datetime) -> Timestamp:
    """A cluster time for `start_at_operation_time` from a UTC datetime (whole seconds, rounded down)."""
    return Timestamp(int(when.timestamp()), 0)


class OutboxTailer:
    """Tails one outbox collection (under its lease) until `stop` is set."""

    def __init__(
        self,
        settings: Settings,
        client: MongoClient[Document],
        database: str,
        *,
        stop: threading.Event,
        instance_id: str,
        reset: Reset | None = None,
        on_ack: AckHook | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.database = database
        self.key = f"{database}.{settings.tailer_collection}"
        self.outbox: Collection[Document] = client[database][settings.tailer_collection]
        # The stream's getMores run in a process of their own (see cdc.fetcher), which outlives sessions.
        self._fetcher = Fetcher(settings.mongo_uri, client_options(settings), name=self.key)
        state = client[settings.tailer_state_database]
        self.store = CheckpointStore(state["checkpoints"])
        self.lease = Lease(state["leases"], self.key, instance_id, settings.tailer_lease_ttl_seconds)
        self.stop = stop
        self.reset = reset
        self.on_ack = on_ack
        self.log = get_logger("cdc.tailer", outbox=self.key)
        self.forwarded = 0
        self.catchups = 0
        self.sessions = 0
        self.linger_switches = 0  # between the short- and the long-linger producer (see Publisher.use_bulk)
        # Per-session state.
        self._publisher: Publisher | None = None
        self._inflight = InFlight()
        self._last_commit = 0.0
        self._last_save = 0.0
        self._saved_token: Mapping[str, Any] | None = None
        self._books: _Bookkeeper | None = None
        # After a drop/rename/invalidate the checkpoint's token would replay the same end: catch up instead.
        self._force_catchup = False
        # When the tailer last read a change of a backlog: marking published yields to reading meanwhile.
        self.draining_at = 0.0
        self._counters: dict[str, Any] = {}

    @property
    def fetcher_pid(self) -> int | None:
        """The pid of this outbox's change-stream fetcher process, while it runs."""
        return self._fetcher.pid

    # -- leadership -------------------------------------------------------------------------------------

    def run(self) -> None:
        """Standby until the lease is ours, lead until it is lost or `stop` is set; repeat."""
        try:
            self._fetcher.start()
            self._run()
        finally:
            self._fetcher.stop()

    def _run(self) -> None:
        backoff = _Backoff()
        while not self.stop.is_set():
            try:
                acquired = self.lease.try_acquire()
            except PyMongoError as exc:
                self.log.warning("lease check failed", error=_short(exc))
                self.stop.wait(backoff.next())
                continue
            backoff.reset()
            if not acquired:
                self.stop.wait(min(1.0, self.settings.tailer_lease_ttl_seconds / 3))
                continue
            try:
                self.lease.start_heartbeat()
                self.store.stamp_fence(self.key, self._fence())
                self._apply_reset()
                self._lead()
            except PyMongoError as exc:
                self.log.warning("leadership interrupted", error=_short(exc))
                self.stop.wait(backoff.next())
            finally:
                if self.stop.is_set():
                    self.lease.release()
                else:
                    self.lease.stop_heartbeat()

    def _fence(self) -> int:
        fence = self.lease.fence
        if fence is None or not self.lease.held:
            raise _LeaseLost("lease not held")
        return fence

    def _apply_reset(self) -> None:
        if self.reset is None:
            return
        self.store.reset(self.key, self._fence(), self.reset.start_at)
        self.log.warning(
            "checkpoint reset by operator",
            start_at=str(self.reset.start_at) if self.reset.start_at else "catch-up scan",
        )
        self.reset = None

    def _lead(self) -> None:
        backoff = _Backoff()
        while not self.stop.is_set():
            if not self.lease.held:
                self.log.warning("lease lost: stepping down to standby")
                return
            self.sessions += 1
            try:
                self._session()
                backoff.reset()
            except (_LeaseLost, FencedError) as exc:
                self.log.warning("lease lost: stepping down to standby", reason=str(exc))
                return
            except _Reopen:
                RESTARTS.labels(self.key, "reopen").inc()
                continue
            except StreamLost as exc:
                self.log.warning("change stream ended; re-opening with the catch-up scan", reason=str(exc))
                self._force_catchup = True
                continue
            except (PyMongoError, KafkaException, DeliveryError, CdcError) as exc:
                RESTARTS.labels(self.key, "error").inc()
                delay = backoff.next()
                self.log.warning("tailer session failed; resuming from checkpoint", error=_short(exc),
                                 error_type=type(exc).__name__, retry_in=round(delay, 2))
                self.stop.wait(delay)

    # -- one session: stream from the checkpoint until something ends it --------------------------------

    def _session(self) -> None:
        self._publisher = Publisher(self.settings, source=self.key)
        self._inflight = InFlight()
        self._saved_token = None
        self._books = _Bookkeeper(self)
        try:
            checkpoint = self.store.load(self.key)
            if self._force_catchup:
                opened, need_catchup = self._watch(), True
            else:
                opened, need_catchup = self._open(checkpoint)
            self._pump(self._catch_up(opened) if need_catchup else opened)
        finally:
            self._fetcher.close_stream()
            self._publisher.close(timeout=5.0)
            self._books.close()
            IN_FLIGHT.labels(self.key).set(0)

    def _watch(self, resume_after: Mapping[str, Any] | None = None, start_at: Timestamp | None = None) -> RemoteStream:
        return self._fetcher.open(
            self.database,
            self.settings.tailer_collection,
            PIPELINE,
            batch_size=self.settings.tailer_batch_size,
            max_await_ms=self.settings.tailer_max_await_ms,
            resume_after=resume_after,
            start_at=start_at,
            codec_options=self.outbox.codec_options,
        )

    def _open(self, checkpoint: Checkpoint) -> tuple[RemoteStream, bool]:
        """The stream to read, and whether the catch-up scan must run first."""
        try:
            if checkpoint.token is not None:
                RESTARTS.labels(self.key, "resume").inc()
                return self._watch(resume_after=checkpoint.token), False
            if checkpoint.start_at is not None:
                floor = self._oplog_floor()
                if floor is not None and checkpoint.start_at < floor:
                    # SecantusDB silently starts at its oldest entry instead of failing: catch up instead.
                    self.log.warning("reset time is older than the oplog; running the catch-up scan",
                                     start_at=str(checkpoint.start_at), oplog_start=str(floor))
                    return self._watch(), True
                RESTARTS.labels(self.key, "start_at").inc()
                return self._watch(start_at=checkpoint.start_at), False
            self.log.info("no checkpoint: starting with the catch-up scan")
            return self._watch(), True
        except OperationFailure as exc:
            if exc.code not in UNRESUMABLE_CODES:
                raise
            self.log.warning("cannot resume the change stream; running the catch-up scan",
                             code=exc.code, error=_short(exc))
            return self._watch(), True

    def _oplog_floor(self) -> Timestamp | None:
        try:
            oplog = self.client["local"]["oplog.rs"]
            first = oplog.find_one({}, sort=[("$natural", 1)], projection={"ts": 1})
        except PyMongoError:
            return None
        ts = first.get("ts") if first else None
        return ts if isinstance(ts, Timestamp) else None

    def _catch_up(self, stream: RemoteStream) -> RemoteStream | None:
        """With the new stream open, publish every unpublished event, then go on from the stream's start."""
        RESTARTS.labels(self.key, "catchup").inc()
        start_token = stream.start_token
        if start_token is None:
            raise CdcError("the server sent no postBatchResumeToken (MongoDB 4.0.7 or later is needed)")
        # Only the stream's starting point is needed: the scan runs without it, and the stream is opened again
        # from that point afterwards (a resume checks the oplog window; an idle open cursor would not).
        stream.close()
        started = time.monotonic()
        assert self._publisher is not None
        self._publisher.use_bulk(True)  # a fresh session's producer has nothing in flight yet
        result = catch_up(
            self.outbox,
            self._forward_scanned,
            should_stop=lambda: self.stop.is_set() or not self.lease.held,
            batch_size=self.settings.tailer_batch_size,
        )
        self._drain()
        if not self.lease.held:
            raise _LeaseLost("lease lost during catch-up")
        if self.stop.is_set():
            return None  # not complete: no checkpoint, the next start catches up again
        self.store.save(self.key, start_token, self._fence(), self.lease.owner)
        self._saved_token = start_token
        self._last_save = time.monotonic()
        self.catchups += 1
        self._force_catchup = False
        self.log.warning("catch-up scan done", published=result.sent, dead_lettered=result.dead_lettered,
                         seconds=round(time.monotonic() - started, 3))
        return self._watch(resume_after=start_token)

    def _pump(self, stream: RemoteStream | None) -> None:
        if stream is None:
            return
        settings = self.settings
        reader = ChangeReader(stream)
        wait = settings.tailer_max_await_ms / 1000
        read_counter = self._counter("read")
        stall_since: float | None = None
        # The latest Idle token with no change after it: it stays valid until a change arrives, so a commit
        # that the commit interval skipped now still gets it later.
        idle_token: Mapping[str, Any] | None = None
        while not self.stop.is_set():
            if not self.lease.held:
                raise _LeaseLost("lease expired")
            self._check_delivery()
            if len(self._inflight) >= settings.tailer_max_in_flight:
                now = time.monotonic()
                stall_since = stall_since or now
                self._commit()
                time.sleep(0.005)
                if now - stall_since > settings.tailer_stall_reopen_seconds:
                    self.log.warning("Kafka acknowledgements stalled; re-opening the stream once they arrive")
                    self._drain()
                    raise _Reopen("stalled")
                continue
            stall_since = None
            # Per batch, not per event: lease, delivery and commit checks, counters, the producer's linger.
            read = 0
            wall: Any = None
            items = reader.take(settings.tailer_batch_size, wait)
            self._pace(items)
            for item in items:
                if type(item) is Idle:
                    idle_token = item.token
                    continue
                if type(item) is Ended:
                    # SecantusDB ends a filtered stream silently after a drop (no invalidate event).
                    raise StreamLost("change stream closed by the server")
                change: Change = item  # type: ignore[assignment]  # Idle and Ended are handled above
                if change["operationType"] != "insert":
                    raise StreamLost(f"{change['operationType']} on {self.key}")
                idle_token = None  # an Idle token only covers what came before it
                wall = change.get("wallTime")
                doc: Document = change["fullDocument"]
                self._forward(doc, change["_id"], wall if isinstance(wall, datetime) else None)
                read += 1
            if read:
                read_counter.inc(read)
                if read >= _BACKLOG_CHUNK or (
                    isinstance(wall, datetime) and time.time() - wall.timestamp() > _BACKLOG_LAG_SECONDS
                ):
                    self.draining_at = time.monotonic()
            self._commit(idle_token=idle_token)
        # Stopping (SIGTERM): flush, checkpoint, return.
        self._drain()

    # -- forwarding and bookkeeping ---------------------------------------------------------------------

    def _pace(self, items: Sequence[Any]) -> None:
        """Forward a backlog through the long-linger producer, fresh changes through the short one."""
        now = time.monotonic()
        draining = now - self.draining_at < _BACKLOG_WINDOW_SECONDS or len(items) >= _BACKLOG_CHUNK
        if not draining and items and type(items[0]) is dict:
            wall = items[0].get("wallTime")
            draining = isinstance(wall, datetime) and time.time() - wall.timestamp() > _BACKLOG_LAG_SECONDS
        publisher = self._publisher
        assert publisher is not None
        if draining != publisher.bulk and publisher.use_bulk(draining):
            self.linger_switches += 1

    def _forward_scanned(self, doc: Document, _token: Document | None) -> bool:
        """The catch-up scan's sender: waits while too much is in flight (the stream loop checks per batch)."""
        while len(self._inflight) >= self.settings.tailer_max_in_flight and not self.stop.is_set():
            self._check_delivery()
            self._commit()
            time.sleep(0.005)
        self.draining_at = time.monotonic()
        sent = self._forward(doc, None, None)
        if sent:
            self._counter("catchup").inc()
        return sent

    def _forward(self, doc: Document, token: Mapping[str, Any] | None, committed_at: datetime | None) -> bool:
        """Send one outbox document; False when it went to a dead-letter topic (not a valid event)."""
        try:
            event = Event.parse(doc)
        except InvalidEventError as exc:
            self._dead_letter(doc, token, str(exc))
            return False
        entry = Sent(event.event_id, token, committed_at or event.occurred_at)
        publisher = self._publisher
        assert publisher is not None
        publisher.send(event, entry, self._inflight, self.on_ack, should_stop=self.stop.is_set)
        return True

    def _counter(self, stage: str) -> Any:
        # `labels()` costs more than the increment itself.
        child = self._counters.get(stage)
        if child is None:
            child = self._counters[stage] = EVENTS.labels(stage, self.key)
        return child

    def _dead_letter(self, doc: Document, token: Mapping[str, Any] | None, reason: str) -> None:
        publisher = self._publisher
        assert publisher is not None
        topic = doc.get("topic")
        target = dlq_topic(topic if isinstance(topic, str) and topic else "outbox")
        event_id = str(doc.get("_id"))
        self.log.error("invalid outbox document sent to dead-letter topic", event_id=event_id, topic=target,
                       reason=reason)
        value = json.dumps(json.loads(json_util.dumps(doc)), separators=(",", ":")).encode()
        headers = [(H_EVENT_ID, event_id.encode()), ("error", reason.encode()[:1000]),
                   ("source_outbox", self.key.encode())]
        entry = Sent(event_id, token, None)
        publisher.produce(target, value, None, headers, entry, self._inflight, None, self.stop.is_set)
        self._counter("dead_lettered").inc()

    def _check_delivery(self) -> None:
        publisher = self._publisher
        if self._books is not None and self._books.error is not None:
            error = self._books.error
            if isinstance(error, FencedError):
                raise _LeaseLost(str(error))
            raise CdcError(f"marking published / checkpointing failed: {_short(error)}")
        if self._inflight.failed is not None:
            raise DeliveryError(f"Kafka delivery failed: {self._inflight.failed}")
        if publisher is not None and publisher.fatal is not None:
            raise DeliveryError(f"fatal producer error: {publisher.fatal}")

    def _commit(self, *, force: bool = False, idle_token: Mapping[str, Any] | None = None) -> None:
        """Mark the acknowledged prefix published and checkpoint after it (at most every commit interval)."""
        now = time.monotonic()
        if not force and (now - self._last_commit) * 1000 < self.settings.tailer_commit_interval_ms:
            return
        self._last_commit = now
        acked = self._inflight.take_acked_prefix()
        IN_FLIGHT.labels(self.key).set(len(self._inflight))
        token: Mapping[str, Any] | None = None
        ids = [e.event_id for e in acked]
        if acked:
            tokens = [e.token for e in acked if e.token is not None]
            token = tokens[-1] if tokens else None
            self.forwarded += len(acked)
            self._counter("forwarded").inc(len(acked))
            BATCH_SIZE.labels(self.key).observe(len(acked))
            LATENCY.observe_many(
                self.key,
                [max(0.0, e.ack_time - e.committed_at.timestamp()) for e in acked if e.committed_at is not None],
            )
        heartbeat_due = now - self._last_save >= self.settings.tailer_heartbeat_seconds
        if idle_token is not None and len(self._inflight) == 0 and (acked or heartbeat_due):
            # Nothing in flight and the batch is drained: the post-batch token covers everything read.
            token = idle_token
        if token is not None and token == self._saved_token:
            token = None
        if not ids and token is None:
            return
        assert self._books is not None
        # Marking published is MongoDB's slowest write here (~1k documents/s): it runs beside the stream, and
        # the checkpoint moves only after the events before it are marked, so a crash never strands one.
        self._books.submit(ids if self.settings.tailer_mark_published else [], token, self._fence())
        if token is not None:
            self._saved_token = token
            self._last_save = now

    def _drain(self, timeout: float | None = None) -> None:
        """Wait until every sent event is acknowledged (or the lease is lost), then commit."""
        publisher = self._publisher
        assert publisher is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self._inflight):
            self._check_delivery()
            if not self.lease.held:
                raise _LeaseLost("lease lost while waiting for Kafka")
            if deadline is not None and time.monotonic() > deadline:
                break
            publisher.flush(0.1)
            self._commit(force=True)
        self._commit(force=True)
        assert self._books is not None
        self._books.wait_idle(self.lease)
        self._check_delivery()


class _Bookkeeper:
    """Marks acknowledged events published, then checkpoints after them, in order, in a thread of its own."""

    MAX_IDS = 5000
    MAX_DEFERRED = 100_000

    def __init__(self, tailer: OutboxTailer) -> None:
        self.tailer = tailer
        self.queue: queue.Queue[tuple[list[str], Mapping[str, Any] | None, int] | None] = queue.Queue()
        self.error: BaseException | None = None
        self._busy = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"books-{tailer.key}", daemon=True)
        self._thread.start()

    def submit(self, ids: list[str], token: Mapping[str, Any] | None, fence: int) -> None:
        self._busy.set()
        self.queue.put((ids, token, fence))

    def _coalesce(self, ids: list[str], token: Mapping[str, Any] | None, fence: int, limit: int) -> tuple[
        list[str], Mapping[str, Any] | None, int, bool
    ]:
        """Add what queued up meanwhile (up to `limit` ids), keeping the latest token; True when told to stop."""
        while len(ids) < limit:
            try:
                more = self.queue.get_nowait()
            except queue.Empty:
                break
            if more is None:
                return ids, token, fence, True
            ids = ids + more[0]
            token, fence = (more[1] or token), more[2]
        return ids, token, fence, False

    def _defer_while_draining(self, ids: list[str], token: Mapping[str, Any] | None, fence: int) -> tuple[
        list[str], Mapping[str, Any] | None, int, bool
    ]:
        """While a backlog drains (see `_BACKLOG_LAG_SECONDS`), marking and checkpointing wait, so the server's
        time goes to reading and forwarding (on SecantusDB each write also costs a scan of its retryable-write
        records); bounded by `tailer_mark_defer_seconds` and MAX_DEFERRED ids. A crash meanwhile only means
        more re-sent duplicates."""
        tailer = self.tailer
        limit = tailer.settings.tailer_mark_defer_seconds
        started = time.monotonic()
        stop = False
        while (
            (ids or token is not None) and not stop and not tailer.stop.is_set()
            and time.monotonic() - started < limit
            and time.monotonic() - tailer.draining_at < _BACKLOG_WINDOW_SECONDS
            and len(ids) < self.MAX_DEFERRED
        ):
            time.sleep(0.01)
            ids, token, fence, stop = self._coalesce(ids, token, fence, self.MAX_DEFERRED)
        return ids, token, fence, stop

    def _run(self) -> None:
        tailer = self.tailer
        while True:
            item = self.queue.get()
            if item is None:
                return
            ids, token, fence = item
            # Coalesce what queued up meanwhile into one bulk update (bounded), keep the latest token.
            ids, token, fence, stop = self._coalesce(ids, token, fence, self.MAX_IDS)
            if not stop:
                ids, token, fence, stop = self._defer_while_draining(ids, token, fence)
            try:
                if ids:
                    mark_published(tailer.outbox, ids)
                if token is not None:
                    tailer.store.save(tailer.key, token, fence, tailer.lease.owner)
            except (PyMongoError, CdcError) as exc:
                self.error = exc
                return
            finally:
                if self.queue.empty():
                    self._busy.clear()
            if stop:
                return

    def wait_idle(self, lease: Lease, timeout: float = 60.0) -> None:
        """Block until everything submitted is marked and checkpointed (or failed, or the lease is lost)."""
        deadline = time.monotonic() + timeout
        while self._busy.is_set() and self.error is None and self._thread.is_alive():
            if not lease.held or time.monotonic() > deadline:
                return
            time.sleep(0.005)

    def close(self) -> None:
        self.queue.put(None)
        self._thread.join(timeout=10)


class _Backoff:
    """Exponential back-off, 0.2 s doubling to 5 s."""

    def __init__(self, first: float = 0.2, cap: float = 5.0) -> None:
        self.first, self.cap, self.current = first, cap, 0.0

    def next(self) -> float:
        self.current = self.first if self.current == 0 else min(self.cap, self.current * 2)
        return self.current

    def reset(self) -> None:
        self.current = 0.0


def _short(exc: BaseException) -> str:
    # pymongo errors append the full server reply; keep the first clause (no credentials are in them).
    return str(exc).split(", full error")[0][:300]


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
        self.outboxes = [
            OutboxTailer(settings, self.client, db, stop=self.stop_event, instance_id=self.instance_id,
                         reset=reset, on_ack=on_ack)
            for db in self.databases
        ]
        self._threads: list[threading.Thread] = []
        self.log = get_logger("cdc.tailer", instance=self.instance_id)

    def start(self) -> Tailer:
        serve_metrics(self.settings.tailer_metrics_port)
        self.log.info("tailer starting", outboxes=[o.key for o in self.outboxes])
        for outbox in self.outboxes:
            thread = threading.Thread(target=self._guard(outbox.run), name=f"tail-{outbox.key}", daemon=True)
            thread.start()
            self._threads.append(thread)
        gauges = threading.Thread(target=self._gauges, name="tailer-gauges", daemon=True)
        gauges.start()
        return self

    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except Exception:
                self.log.exception("outbox tailer crashed")
                self.stop_event.set()
                raise

        return run

    def _gauges(self) -> None:
        while not self.stop_event.wait(self.settings.tailer_backlog_interval_seconds):
            for outbox in self.outboxes:
                try:
                    count, _oldest = backlog(outbox.outbox)
                    BACKLOG.labels(outbox.key).set(count)
                    checkpoint = outbox.store.load(outbox.key)
                    if checkpoint.updated_at is not None:
                        CHECKPOINT_AGE.labels(outbox.key).set(time.time() - checkpoint.updated_at.timestamp())
                except PyMongoError:
                    continue

    def request_stop(self) -> None:
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the outbox threads; True when all of them ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop (flush, checkpoint, release the leases) and wait; True on a clean stop."""
        self.request_stop()
        done = self.join(timeout)
        if self._own_client:
            self.client.close()
        return done

    def run(self) -> None:
        """Start and block until stopped."""
        self.start()
        while not self.stop_event.wait(0.5):
            pass
        self.join(120)
        if self._own_client:
            self.client.close()

    def __enter__(self) -> Tailer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
