"""One tailer session on one outbox: open the change stream from the checkpoint, forward, checkpoint, until
something ends it.

1. Open the stream after the checkpoint's resume token, or at an operator's point in time; with no usable
   checkpoint (none, invalid, history lost, invalidated) open a fresh stream first, run the catch-up scan of
   every document from the checkpoint's `scan_from`, then continue with the stream from where it was opened.
2. Forward each event (key = aggregate_id) without waiting, tracking acknowledgements in stream order. A document
   that is not a valid event, or a record Kafka refuses for good, becomes a dead letter of the tailer's own
   (cdc/dead_letters.py) and the stream goes on.
3. Every commit interval, checkpoint the resume token after the longest prefix of events that are acknowledged
   or dead-lettered, with the watermark (newest occurred_at among them); an idle stream checkpoints its
   post-batch resume token on a heartbeat. The checkpoint is written here, in the outbox's own thread: one small
   write per interval, so it never waits behind anything and never runs after its session.
4. Any failure (MongoDB, Kafka, the fetcher) ends the session; the caller starts a new one from the checkpoint.
   Stopping (SIGTERM) drains what Kafka acknowledges before the deadline, checkpoints it, and returns.

With tracing on (cdc/tracing.py), an event that carries a `traceparent` is sent under a PRODUCER span, child of
it, that ends with Kafka's acknowledgement; the record carries that span's traceparent on to the workers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pymongo
from bson.int64 import Int64
from bson.timestamp import Timestamp
from pymongo.collection import Collection
from pymongo.errors import OperationFailure, PyMongoError

from cdc import tracing
from cdc.acks import InFlight, Sent
from cdc.catchup import catch_up
from cdc.checkpoint import Checkpoint, CheckpointStore, Position
from cdc.dead_letters import INVALID, REFUSED, DeadLetterStore
from cdc.errors import CdcError, InvalidEventError
from cdc.event import H_TRACEPARENT, Event
from cdc.lease import Lease
from cdc.logs import get_logger
from cdc.metrics import BATCH_SIZE, EVENTS, IN_FLIGHT, LAG, LATENCY, RESTARTS
from cdc.publisher import AckHook, DeliveryError, Publisher
from cdc.settings import Settings
from cdc.stream_reader import Change, ChangeReader, Ended, Fetcher, Idle, RemoteStream

Document = dict[str, Any]

# Stream lifecycle events that end a collection's stream; every other non-insert change (deletes by pruning, ...)
# is filtered out on the server.
LIFECYCLE_OPS = ("drop", "rename", "dropDatabase", "invalidate")
PIPELINE: list[Document] = [{"$match": {"operationType": {"$in": ["insert", *LIFECYCLE_OPS]}}}]

# Server errors that mean "this resume point is unusable": history lost, fatal stream error, invalid token
# (bad value, cannot parse, resume from an invalidate), a token of another namespace (SecantusDB: 13).
UNRESUMABLE_CODES = frozenset({286, 280, 260, 9, 2, 13, 136})

# Of the time a stop allows, what is kept for the last checkpoint and closing the stream after the drain.
_CHECKPOINT_RESERVE_SECONDS = 3.0


class StreamLost(CdcError):
    """The change stream cannot go on (invalidated, dropped, renamed): restart with the catch-up scan."""


class Reopen(CdcError):
    """Re-open the stream from the checkpoint (after a long wait on Kafka)."""


class LeaseLost(CdcError):
    """The lease ran out or was taken over: stop leading."""


@dataclass
class Outbox:
    """What a session works on: one outbox, its stores, its lease and its fetcher, shared across sessions."""

    settings: Settings
    key: str
    collection: Collection[Document]
    store: CheckpointStore
    dead_letters: DeadLetterStore
    lease: Lease
    fetcher: Fetcher
    should_stop: Callable[[], bool]
    stop_deadline: Callable[[], float | None]
    on_ack: AckHook | None = None


class Session:
    """One session: `run()` until stopped (returns) or something fails (raises)."""

    def __init__(self, outbox: Outbox, number: int, *, force_catchup: bool) -> None:
        self.o = outbox
        self.settings = outbox.settings
        self.number = number
        self.force_catchup = force_catchup
        self.log = get_logger("cdc.tailer", outbox=outbox.key, session=number)
        # Tracing on: spans of the events in flight, by id(entry), ended by the acknowledgement.
        self._traced = tracing.enabled()
        self._spans: dict[int, Any] = {}
        self.publisher = Publisher(self.settings, source=outbox.key,
                                   on_ack=self._ack_traced if self._traced else outbox.on_ack)
        self.inflight = InFlight()
        self.forwarded = 0
        self.caught_up = False
        self._seq = 0
        self._saved_token: Mapping[str, Any] | None = None
        self._watermark: datetime | None = None
        self._last_commit = 0.0
        self._last_save = 0.0
        self._read = EVENTS.labels("read", outbox.key)
        self._forwarded = EVENTS.labels("forwarded", outbox.key)
        self._catchup = EVENTS.labels("catchup", outbox.key)

    # -- the session ------------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            checkpoint = self.o.store.load(self.o.key)
            self._watermark = checkpoint.watermark
            if self.force_catchup:
                stream, need_catchup = self._watch(), True
            else:
                stream, need_catchup = self._open(checkpoint)
            self._pump(self._catch_up(stream, checkpoint) if need_catchup else stream)
        finally:
            self.o.fetcher.close_stream(timeout=self._remaining(10.0))
            self._kill_orphan()
            self.publisher.close(timeout=self._remaining(5.0))
            IN_FLIGHT.labels(self.o.key).set(0)
            for span in self._spans.values():  # not acknowledged: sent again by the next session
                span.end()
            self._spans.clear()

    def _kill_orphan(self) -> None:
        """Kill the server cursor of a fetcher that died (kill -9, a crash) with its stream open."""
        orphan, self.o.fetcher.orphan = self.o.fetcher.orphan, None
        if orphan is None:
            return
        database, collection, cursor_id = orphan
        try:
            with pymongo.timeout(self._remaining(5.0)):
                self.o.collection.database.client[database].command(
                    {"killCursors": collection, "cursors": [Int64(cursor_id)]})
            self.log.info("dead_fetcher_cursor_killed", cursor_id=cursor_id)
        except PyMongoError as exc:  # the server reaps it after its idle timeout
            self.log.warning("dead_fetcher_cursor_kill_failed", cursor_id=cursor_id,
                             error=short(exc))

    def _remaining(self, cap: float) -> float:
        """Seconds the next step may take: `cap`, or less once a stop deadline is set (at least a moment, so
        that a last checkpoint can still be tried)."""
        deadline = self.o.stop_deadline()
        return cap if deadline is None else max(0.2, min(cap, deadline - time.monotonic()))

    def _fence(self) -> int:
        fence = self.o.lease.fence
        if fence is None or not self.o.lease.held:
            raise LeaseLost("lease not held")
        return fence

    def _watch(self, resume_after: Mapping[str, Any] | None = None, start_at: Timestamp | None = None) -> RemoteStream:
        return self.o.fetcher.open(
            self.o.collection.database.name,
            self.o.collection.name,
            PIPELINE,
            batch_size=self.settings.tailer_batch_size,
            max_await_ms=self.settings.tailer_max_await_ms,
            resume_after=resume_after,
            start_at=start_at,
            codec_options=self.o.collection.codec_options,
        )

    def _open(self, checkpoint: Checkpoint) -> tuple[RemoteStream, bool]:
        """The stream to read, and whether the catch-up scan must run first."""
        try:
            if checkpoint.token is not None:
                RESTARTS.labels(self.o.key, "resume").inc()
                return self._watch(resume_after=checkpoint.token), False
            if checkpoint.start_at is not None:
                floor = self._oplog_floor()
                if floor is not None and checkpoint.start_at < floor:
                    # SecantusDB silently starts at its oldest entry instead of failing: catch up instead.
                    self.log.warning("reset_before_oplog_catch_up_scan",
                                     start_at=str(checkpoint.start_at), oplog_start=str(floor))
                    return self._watch(), True
                RESTARTS.labels(self.o.key, "start_at").inc()
                return self._watch(start_at=checkpoint.start_at), False
            self.log.info("no_checkpoint_catch_up_scan")
            return self._watch(), True
        except OperationFailure as exc:
            if exc.code not in UNRESUMABLE_CODES:
                raise
            self.log.warning("resume_failed_catch_up_scan",
                             code=exc.code, error=short(exc))
            return self._watch(), True

    def _oplog_floor(self) -> Timestamp | None:
        try:
            oplog = self.o.collection.database.client["local"]["oplog.rs"]
            first = oplog.find_one({}, sort=[("$natural", 1)], projection={"ts": 1})
        except PyMongoError:
            return None
        ts = first.get("ts") if first else None
        return ts if isinstance(ts, Timestamp) else None

    def _catch_up(self, stream: RemoteStream, checkpoint: Checkpoint) -> RemoteStream | None:
        """With the new stream open, send every document from `scan_from` on, then go on from the stream's start."""
        RESTARTS.labels(self.o.key, "catchup").inc()
        start_token = stream.start_token
        if start_token is None:
            raise CdcError("the server sent no postBatchResumeToken (MongoDB 4.0.7 or later is needed)")
        # Only the stream's starting point is needed: the scan runs without it, and the stream is opened again
        # from that point afterwards (a resume checks the oplog window; an idle open cursor would not).
        stream.close()
        started = time.monotonic()
        result = catch_up(
            self.o.collection,
            checkpoint.scan_from,
            self._forward_scanned,
            should_stop=lambda: self.o.should_stop() or not self.o.lease.held,
            batch_size=self.settings.tailer_batch_size,
        )
        self._drain()
        if not self.o.lease.held:
            raise LeaseLost("lease lost during catch-up")
        if self.o.should_stop():
            return None  # not complete: no checkpoint, the next start catches up again
        self._save(start_token)
        self.caught_up = True
        self.log.warning("catch_up_scan_done", scanned_from=str(checkpoint.scan_from), sent=result.sent,
                         dead_lettered=result.dead_lettered, seconds=round(time.monotonic() - started, 3))
        return self._watch(resume_after=start_token)

    def _pump(self, stream: RemoteStream | None) -> None:
        if stream is None:
            return
        settings = self.settings
        reader = ChangeReader(stream)
        wait = settings.tailer_max_await_ms / 1000
        lag = LAG.labels(self.o.key)
        stall_since: float | None = None
        # The latest Idle token with no change after it: it stays valid until a change arrives, so a commit
        # that the commit interval skipped now still gets it later.
        idle_token: Mapping[str, Any] | None = None
        while not self.o.should_stop():
            if not self.o.lease.held:
                raise LeaseLost("lease expired")
            self._check_delivery()
            if len(self.inflight) >= settings.tailer_max_in_flight:
                now = time.monotonic()
                stall_since = stall_since or now
                self._commit()
                time.sleep(0.005)
                if now - stall_since > settings.tailer_stall_reopen_seconds:
                    self.log.warning("kafka_acks_stalled")
                    self._drain()
                    raise Reopen("stalled")
                continue
            stall_since = None
            # Per batch, not per event: lease, delivery and commit checks, counters.
            read = 0
            wall: Any = None
            for item in reader.take(settings.tailer_batch_size, wait):
                if type(item) is Idle:
                    idle_token = item.token
                    lag.set(0)
                    continue
                if type(item) is Ended:
                    # SecantusDB ends a filtered stream silently after a drop (no invalidate event).
                    raise StreamLost("change stream closed by the server")
                change: Change = item  # type: ignore[assignment]  # Idle and Ended are handled above
                if change["operationType"] != "insert":
                    raise StreamLost(f"{change['operationType']} on {self.o.key}")
                idle_token = None  # an Idle token only covers what came before it
                wall = change.get("wallTime")
                self._forward(change["fullDocument"], change["_id"], wall if isinstance(wall, datetime) else None)
                read += 1
            if read:
                self._read.inc(read)
                if isinstance(wall, datetime):
                    lag.set(max(0.0, time.time() - wall.timestamp()))
            self._commit(idle_token=idle_token)
        # Stopping (SIGTERM): send what was read, checkpoint what Kafka acknowledged in time, return.
        self._drain()

    # -- forwarding -------------------------------------------------------------------------------------

    def _forward_scanned(self, doc: Document) -> bool:
        """The catch-up scan's sender: waits while too much is in flight (the stream loop checks per batch)."""
        while len(self.inflight) >= self.settings.tailer_max_in_flight and not self.o.should_stop():
            self._check_delivery()
            self._commit()
            time.sleep(0.005)
        sent = self._forward(doc, None, None)
        if sent:
            self._catchup.inc()
        return sent

    def _forward(self, doc: Document, token: Mapping[str, Any] | None, committed_at: datetime | None) -> bool:
        """Send one outbox document; False when it is not a valid event (it becomes a dead letter)."""
        try:
            event = Event.parse(doc)
        except Exception as exc:  # whatever a document holds, it is the document's fault, not the stream's
            reason = str(exc) if isinstance(exc, InvalidEventError) else f"cannot read it: {type(exc).__name__}: {exc}"
            entry = Sent(str(doc.get("_id")), token, committed_at, document=doc)
            self.inflight.add(entry)
            topic = doc.get("topic")
            self._dead_letter(entry, INVALID, reason, topic if isinstance(topic, str) else None)
            return False
        entry = Sent(event.event_id, token, committed_at or event.occurred_at, occurred_at=event.occurred_at,
                     topic=event.topic, document=doc)
        if self._traced and H_TRACEPARENT in event.headers:
            self._send_traced(event, entry)
        else:
            self.publisher.send_event(event, entry, self.inflight, should_stop=self.o.should_stop)
        return True

    def _send_traced(self, event: Event, entry: Sent) -> None:
        """Send `event` under a PRODUCER span that continues its trace; the record carries the span's context."""
        topic = self.publisher.kafka_topic(event.topic)
        span = tracing.start_span(f"{topic} publish", parent=tracing.parse(event.headers[H_TRACEPARENT]),
                                  kind="PRODUCER", attributes={
                                      "messaging.system": "kafka", "messaging.operation.type": "send",
                                      "messaging.destination.name": topic, "messaging.message.id": event.event_id,
                                      "cdcflow.outbox": self.o.key})
        self._spans[id(entry)] = span
        headers = tracing.with_traceparent(event.kafka_headers(), tracing.traceparent_of(span))
        self.publisher.send(entry, event.to_json(), event.kafka_key(), headers, self.inflight,
                            should_stop=self.o.should_stop)

    def _ack_traced(self, entry: Sent) -> None:
        span = self._spans.pop(id(entry), None)
        if span is not None:
            span.end()
        if self.o.on_ack is not None:
            self.o.on_ack(entry)

    def _dead_letter(self, entry: Sent, kind: str, reason: str, topic: str | None) -> None:
        """Record `entry` as a dead letter (before the checkpoint may move past it)."""
        assert entry.document is not None
        self.o.dead_letters.record(self.o.key, entry.document, kind=kind, reason=reason, topic=topic)
        entry.dead_lettered = True

    def _record_refusals(self) -> None:
        refusals = self.inflight.refusals
        while refusals:
            entry = refusals.popleft()
            self._dead_letter(entry, REFUSED, entry.refused or "refused", entry.topic)
            span = self._spans.pop(id(entry), None) if self._traced else None
            if span is not None:
                tracing.fail(span, entry.refused or "refused")
                span.end()

    def _check_delivery(self) -> None:
        if self.inflight.failed is not None:
            raise DeliveryError(f"Kafka delivery failed: {self.inflight.failed}")
        if self.publisher.fatal is not None:
            raise DeliveryError(f"fatal producer error: {self.publisher.fatal}")

    # -- checkpoints ------------------------------------------------------------------------------------

    def _commit(self, *, force: bool = False, idle_token: Mapping[str, Any] | None = None) -> None:
        """Checkpoint after the prefix of done events (at most every commit interval)."""
        now = time.monotonic()
        if not force and (now - self._last_commit) * 1000 < self.settings.tailer_commit_interval_ms:
            return
        self._last_commit = now
        self._record_refusals()
        done = self.inflight.take_done_prefix()
        IN_FLIGHT.labels(self.o.key).set(len(self.inflight))
        token: Mapping[str, Any] | None = None
        if done:
            for entry in reversed(done):
                if entry.token is not None:
                    token = entry.token
                    break
            acked = [e for e in done if e.acked]
            self.forwarded += len(acked)
            self._forwarded.inc(len(acked))
            BATCH_SIZE.labels(self.o.key).observe(len(done))
            LATENCY.observe_many(
                self.o.key,
                [max(0.0, e.ack_time - e.committed_at.timestamp()) for e in acked if e.committed_at is not None],
            )
            newest = max((e.occurred_at for e in done if e.occurred_at is not None), default=None)
            if newest is not None and (self._watermark is None or newest > self._watermark):
                self._watermark = newest
        heartbeat_due = now - self._last_save >= self.settings.tailer_heartbeat_seconds
        if idle_token is not None and len(self.inflight) == 0 and (done or heartbeat_due):
            # Nothing in flight and the batch is drained: the post-batch token covers everything read.
            token = idle_token
        if token is not None and token != self._saved_token:
            self._save(token)

    def _save(self, token: Mapping[str, Any]) -> None:
        self._seq += 1
        margin = timedelta(seconds=self.settings.tailer_scan_margin_seconds)
        scan_from = None if self._watermark is None else self._watermark - margin
        position = Position(token, self._watermark, scan_from)
        # Bounded like every step of a stop; otherwise by the client's own timeouts.
        with pymongo.timeout(self._remaining(self.settings.tailer_stop_timeout_seconds)):
            self.o.store.save(self.o.key, position, fence=self._fence(), session=self.number, seq=self._seq,
                              owner=self.o.lease.owner)
        self._saved_token = token
        self._last_save = time.monotonic()

    def _drain(self) -> None:
        """Wait until every sent event is acknowledged or dead-lettered (or the lease is lost, or a stop's
        deadline comes near), then checkpoint."""
        while len(self.inflight):
            self._check_delivery()
            if not self.o.lease.held:
                raise LeaseLost("lease lost while waiting for Kafka")
            deadline = self.o.stop_deadline()
            if deadline is not None and time.monotonic() >= deadline - _CHECKPOINT_RESERVE_SECONDS:
                self.log.warning("stop_deadline_events_in_flight",
                                 in_flight=len(self.inflight))
                break
            self.publisher.flush(0.1)
            self._commit(force=True)
        self._commit(force=True)


def short(exc: BaseException) -> str:
    """The first clause of an error (pymongo appends the full server reply; no credentials are in it)."""
    return str(exc).split(", full error")[0][:300]


__all__: Sequence[str] = ("PIPELINE", "LeaseLost", "Outbox", "Reopen", "Session", "StreamLost", "short")
