"""The batch step of a worker, free of Faust: decode → validate → sink.write (retry) → dead letters.

`BatchProcessor.process(records)` returns only when every record of the batch is either written to the sink
or published to the dead-letter topic; the caller acks (commits) the batch after that and never before.

Decoding turns *every* exception a record raises into a dead letter with its reason, so no record can stop the
stream: not UTF-8, not JSON, nested too deep (RecursionError), an integer too long to convert (ValueError), not
an object, a field of the wrong type or out of range, text with lone surrogates (it could not be written
anywhere), larger than `stream_max_record_bytes`, a payload that does not validate, a type the read model does
not handle.

Errors of the sink (sinks/base.py):
- `TransientSinkError` (the store is down, or refuses us: `SinkRefusedError`): the same batch is retried with
  exponential backoff, forever (until the worker is stopped); each attempt is logged (`sink_unavailable`,
  `sink_refused`) and counted (`cdcflow_sink_retries_total{cause}`, `cdcflow_sink_waiting`, and `status`).
- `PermanentSinkError`: the batch is written again one event at a time; the events the sink rejects are
  dead-lettered, the others written.
- Anything else is a bug of the sink, which would hit good events alike: retried like a transient error and
  logged with its traceback, never dead-lettered.

Holds: a dead-lettered event with a version (its aggregate is known: from the event, or from the record's key
and `event_id`/`version` headers when it does not decode) is passed to `sink.hold()` *before* any later record
of the batch is written, so the sink keeps that aggregate's later events back until the event itself is
re-driven (`cdcflow dlq replay`) and applied; then they follow it. A re-driven event thus still takes effect.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from cdc.errors import InvalidEventError
from cdc.event import H_EVENT_ID, H_VERSION, Event
from cdc.logs import get_logger
from cdc.schemas import parse_payload
from sinks.base import Hold, PermanentSinkError, Sink, SinkRefusedError, TransientSinkError
from streams.metrics import EVENTS, SINK_RETRIES, SINK_WAITING

log = get_logger(__name__)

T = TypeVar("T")

#: Longest reason kept from an exception message (a validation error can name a path thousands deep).
MAX_REASON = 1000


@dataclass(frozen=True)
class RawRecord:
    """A Kafka record as consumed: where it came from and its untouched bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: float | None = None


@dataclass(frozen=True)
class DeadLetter:
    """A record that cannot be applied, and why."""

    record: RawRecord
    reason: str
    read_model: str
    event_id: str | None = None


class DeadLetterPublisher(Protocol):
    """Publishes dead letters; returns only once the broker acknowledged them (raises otherwise)."""

    async def publish(self, letters: Sequence[DeadLetter]) -> None: ...


@dataclass
class Backoff:
    """Exponential backoff: initial, doubling, capped at maximum."""

    initial: float = 0.2
    maximum: float = 5.0

    def delays(self) -> Callable[[], float]:
        """A fresh sequence of delays: call it to get the next one."""
        state = {"next": self.initial}

        def nxt() -> float:
            delay = state["next"]
            state["next"] = min(delay * 2, self.maximum)
            return delay

        return nxt


@dataclass
class BatchResult:
    """What a batch turned into."""

    written: int = 0
    dead: list[DeadLetter] = field(default_factory=list)
    retries: int = 0


@dataclass
class SinkStatus:
    """Whether the worker's writes are waiting on its sink, and why (the same as the metrics say)."""

    waiting: bool = False
    #: `unavailable`, `refused` or `unexpected` while waiting; the last cause afterwards.
    cause: str | None = None
    attempts: int = 0
    since: float | None = None
    last_error: str | None = None


def _short(text: str) -> str:
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


class RejectedRecord(InvalidEventError):
    """A record that cannot be applied: the reason, and its event's envelope when it decoded that far."""

    def __init__(self, reason: str, event: Event | None = None) -> None:
        super().__init__(_short(reason))
        self.event = event


def decode(record: RawRecord, sink: Sink, max_bytes: int | None = None) -> Event:
    """The validated event of a record, or RejectedRecord saying why not (the dead-letter reason).

    Never raises anything else: whatever a record makes the decoder raise is a reason to dead-letter it."""
    value = record.value
    try:
        if value is None:
            raise InvalidEventError("empty record value")
        if max_bytes is not None and len(value) > max_bytes:
            raise InvalidEventError(f"record too large: {len(value)} bytes (at most {max_bytes})")
        event = Event.from_json(value)
    except InvalidEventError as exc:
        raise RejectedRecord(str(exc)) from exc
    except RecursionError as exc:
        raise RejectedRecord(f"too deeply nested: {exc}") from exc
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise RejectedRecord(f"malformed JSON: {exc}") from exc
    except Exception as exc:
        raise RejectedRecord(f"undecodable record: {type(exc).__name__}: {exc}") from exc
    try:
        _validate(event, value, sink)
    except InvalidEventError as exc:
        raise RejectedRecord(str(exc), event) from exc
    except Exception as exc:
        raise RejectedRecord(f"invalid event: {type(exc).__name__}: {exc}", event) from exc
    return event


def _validate(event: Event, value: bytes, sink: Sink) -> None:
    if b"\\ud" in value or b"\\uD" in value:
        # A lone surrogate escape decodes to a str that no store (nor UTF-8) can take.
        try:
            event.to_json()
        except Exception as exc:
            raise InvalidEventError(f"text is not valid Unicode (a lone surrogate): {exc}") from exc
    parse_payload(event)
    if event.type not in sink.event_types:
        raise InvalidEventError(f"event type {event.type!r} is not handled by read model {sink.name}")


class BatchProcessor:
    """Applies batches of records to one sink; owns the sink and a thread for its blocking calls."""

    def __init__(
        self,
        sink: Sink,
        dead_letters: DeadLetterPublisher,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        max_record_bytes: int | None = None,
    ) -> None:
        self.sink = sink
        self.dead_letters = dead_letters
        self.backoff = backoff or Backoff()
        self.max_record_bytes = max_record_bytes
        self.status = SinkStatus()
        self._sleep = sleep or asyncio.sleep
        self._ready = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sink-{sink.name}")
        self.log = log.bind(read_model=sink.name, namespace=sink.namespace)

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _setup_and(self, fn: Callable[[], None]) -> None:
        if not self._ready:
            self.sink.setup()
            self._ready = True
        fn()

    async def _pause(self, delay: float) -> None:
        await self._sleep(delay)

    async def _retrying(self, what: str, fn: Callable[[], None], first_event_id: str | None) -> None:
        """Run fn (after setup) until it works; PermanentSinkError propagates; anything else is retried."""
        next_delay = self.backoff.delays()
        attempt = 0
        while True:
            try:
                await self._call(self._setup_and, fn)
                if attempt:
                    self.log.info("sink_recovered", attempts=attempt + 1, what=what, cause=self.status.cause)
                    self._waiting(None)
                return
            except PermanentSinkError:
                if attempt:
                    self._waiting(None)
                raise
            except SinkRefusedError as exc:
                cause, error = "refused", str(exc)
                self.log.warning("sink_refused", error=error, attempt=attempt + 1, what=what,
                                 first_event_id=first_event_id)
            except TransientSinkError as exc:
                cause, error = "unavailable", str(exc)
                self.log.warning("sink_unavailable", error=error, attempt=attempt + 1, what=what,
                                 first_event_id=first_event_id)
            except Exception as exc:  # a bug of the sink: keep the events, do not commit past them
                cause, error = "unexpected", repr(exc)
                self.log.error("sink_write_failed", error=error, attempt=attempt + 1, what=what,
                               first_event_id=first_event_id, exc_info=True)
            attempt += 1
            self._waiting(cause, error)
            delay = next_delay()
            self.log.info("sink_retry_scheduled", cause=cause, attempt=attempt, retry_in=delay)
            await self._pause(delay)

    def _waiting(self, cause: str | None, error: str | None = None) -> None:
        """Record (status, metrics) that writes wait on the sink for `cause`, or no longer wait (None)."""
        name = self.sink.name
        if self.status.cause is not None:
            SINK_WAITING.labels(name, self.status.cause).set(0)
        if cause is None:
            self.status.waiting, self.status.since = False, None
            return
        SINK_RETRIES.labels(name, cause).inc()
        SINK_WAITING.labels(name, cause).set(1)
        if not self.status.waiting:
            self.status.since = time.time()
        self.status.waiting, self.status.cause, self.status.last_error = True, cause, error
        self.status.attempts += 1

    async def _write_retrying(self, events: Sequence[Event], result: BatchResult) -> None:
        retries_before = self.status.attempts
        try:
            await self._retrying("write", lambda: self.sink.write(events), events[0].event_id)
        finally:
            result.retries += self.status.attempts - retries_before

    async def _hold_retrying(self, hold: Hold) -> None:
        """Record a hold before anything later is written; a hold the store cannot take is logged and skipped
        (its event could never be applied anyway: e.g. an aggregate id too long for the store's keys)."""
        try:
            await self._retrying("hold", lambda: self.sink.hold([hold]), hold.event_id)
        except PermanentSinkError as exc:
            self.log.warning("hold_not_recorded", aggregate_id=hold.aggregate_id[:200], event_id=hold.event_id,
                             error=str(exc))
            return
        self.log.info("aggregate_held", aggregate_id=hold.aggregate_id[:200], event_id=hold.event_id,
                      version=hold.version)

    async def _publish_retrying(self, letters: Sequence[DeadLetter]) -> None:
        next_delay = self.backoff.delays()
        while True:
            try:
                await self.dead_letters.publish(letters)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = next_delay()
                self.log.warning("dlq_publish_failed", error=repr(exc), retry_in=delay, letters=len(letters))
                await self._pause(delay)

    async def process(self, records: Sequence[RawRecord]) -> BatchResult:
        """Apply `records`; returns once each is written or dead-lettered (then, and only then, ack them)."""
        result = BatchResult()
        started = time.perf_counter()
        segment: list[tuple[RawRecord, Event]] = []
        for record in records:
            try:
                segment.append((record, decode(record, self.sink, self.max_record_bytes)))
                continue
            except RejectedRecord as exc:
                event, reason = exc.event, str(exc)
            result.dead.append(DeadLetter(
                record, reason, self.sink.name, event.event_id if event else _header_event_id(record)
            ))
            hold = _hold_of_record(record, reason) if event is None else _hold_of_event(event, reason)
            if hold is not None:
                # What came before it is written first: only the aggregate's *later* events are held back.
                await self._apply(segment, result)
                segment = []
                await self._hold_retrying(hold)
        await self._apply(segment, result)
        if records:
            self.log.debug(
                "batch_processed", records=len(records), written=result.written, dead=len(result.dead),
                seconds=round(time.perf_counter() - started, 4), topic=records[0].topic,
                first_offset=records[0].offset, last_offset=records[-1].offset,
            )
        if result.dead:
            for letter in result.dead:
                r = letter.record
                self.log.warning("dead_letter", topic=r.topic, partition=r.partition, offset=r.offset,
                                 event_id=letter.event_id, reason=letter.reason)
            await self._publish_retrying(result.dead)
        EVENTS.labels("applied", self.sink.name).inc(result.written)
        EVENTS.labels("dead_lettered", self.sink.name).inc(len(result.dead))
        return result

    async def _apply(self, good: Sequence[tuple[RawRecord, Event]], result: BatchResult) -> None:
        if not good:
            return
        events = [e for _, e in good]
        try:
            await self._write_retrying(events, result)
            result.written += len(events)
        except PermanentSinkError as exc:
            self.log.warning("batch_rejected_isolating", error=str(exc), events=len(events))
            await self._isolate(good, result)

    async def _isolate(self, good: Sequence[tuple[RawRecord, Event]], result: BatchResult) -> None:
        """A batch was rejected: write its events one by one, dead-lettering the ones the sink rejects (and
        holding their aggregates back before the next event is written)."""
        for record, event in good:
            try:
                await self._write_retrying([event], result)
                result.written += 1
            except PermanentSinkError as exc:
                reason = _short(str(exc))
                result.dead.append(DeadLetter(record, reason, self.sink.name, event.event_id))
                hold = _hold_of_event(event, reason)
                if hold is not None:
                    await self._hold_retrying(hold)

    def close(self) -> None:
        """Close the sink and its thread."""
        try:
            self.sink.close()
        finally:
            self._executor.shutdown(wait=False)


def _header(record: RawRecord, name: str) -> str | None:
    for key, value in record.headers:
        if key == name:
            try:
                return value.decode()
            except UnicodeDecodeError:
                return None
    return None


def _header_event_id(record: RawRecord) -> str | None:
    return _header(record, H_EVENT_ID)


def _hold_of_event(event: Event, reason: str) -> Hold | None:
    """A dead-lettered event holds its aggregate back when it has a version (order matters only then)."""
    if event.version is None:
        return None
    return Hold(event.aggregate_id, event.event_id, event.version, reason)


def _hold_of_record(record: RawRecord, reason: str) -> Hold | None:
    """The hold a record that does not decode implies: its aggregate (the key), event id and version from the
    headers the tailer sets. None when any is missing (then nothing can re-drive it into effect either)."""
    event_id, version_text = _header(record, H_EVENT_ID), _header(record, H_VERSION)
    if record.key is None or not event_id or not version_text or not version_text.isascii():
        return None
    try:
        aggregate_id = record.key.decode()
        version = int(version_text)
    except ValueError:  # UnicodeDecodeError included
        return None
    if not aggregate_id or version < 1:
        return None
    return Hold(aggregate_id, event_id, version, reason)
