"""The batch step of a worker, free of Faust: decode → validate → sink.write (retry) → dead letters.

`BatchProcessor.process(records)` returns only when every record of the batch is either written to the sink
or published to the dead-letter topic; the caller acks (commits) the batch after that and never before. A sink
that is down is retried with exponential backoff, forever (until the worker is stopped): nothing is skipped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from cdc.errors import InvalidEventError
from cdc.event import Event
from cdc.logs import get_logger
from cdc.schemas import parse_payload
from sinks.base import PermanentSinkError, Sink, TransientSinkError

log = get_logger(__name__)

T = TypeVar("T")


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


def decode(record: RawRecord, sink: Sink) -> Event:
    """The validated event of a record, or InvalidEventError saying why not (the dead-letter reason)."""
    if record.value is None:
        raise InvalidEventError("empty record value")
    event = Event.from_json(record.value)
    parse_payload(event)
    if event.type not in sink.event_types:
        raise InvalidEventError(f"event type {event.type!r} is not handled by read model {sink.name}")
    return event


class BatchProcessor:
    """Applies batches of records to one sink; owns the sink and a thread for its blocking calls."""

    def __init__(
        self,
        sink: Sink,
        dead_letters: DeadLetterPublisher,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.sink = sink
        self.dead_letters = dead_letters
        self.backoff = backoff or Backoff()
        self._sleep = sleep or asyncio.sleep
        self._ready = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sink-{sink.name}")
        self.log = log.bind(read_model=sink.name, namespace=sink.namespace)

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _setup_and_write(self, events: Sequence[Event]) -> None:
        if not self._ready:
            self.sink.setup()
            self._ready = True
        self.sink.write(events)

    async def _pause(self, delay: float) -> None:
        await self._sleep(delay)

    async def _write_retrying(self, events: Sequence[Event], result: BatchResult) -> None:
        """Write until it works; PermanentSinkError propagates; anything else is retried."""
        next_delay = self.backoff.delays()
        attempt = 0
        while True:
            try:
                await self._call(self._setup_and_write, events)
                if attempt:
                    self.log.info("sink_recovered", attempts=attempt + 1, events=len(events))
                return
            except PermanentSinkError:
                raise
            except TransientSinkError as exc:
                attempt += 1
                result.retries += 1
                delay = next_delay()
                self.log.warning("sink_unavailable", error=str(exc), attempt=attempt, retry_in=delay,
                                 first_event_id=events[0].event_id)
            except Exception as exc:  # an unexpected error: keep the events, do not commit past them
                attempt += 1
                result.retries += 1
                delay = next_delay()
                self.log.error("sink_write_failed", error=repr(exc), attempt=attempt, retry_in=delay,
                               first_event_id=events[0].event_id, exc_info=True)
            await self._pause(delay)

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
        good: list[tuple[RawRecord, Event]] = []
        for record in records:
            try:
                good.append((record, decode(record, self.sink)))
            except InvalidEventError as exc:
                result.dead.append(DeadLetter(record, str(exc), self.sink.name, _header_event_id(record)))
        events = [e for _, e in good]
        if events:
            started = time.perf_counter()
            try:
                await self._write_retrying(events, result)
                result.written = len(events)
            except PermanentSinkError as exc:
                self.log.warning("batch_rejected_isolating", error=str(exc), events=len(events))
                await self._isolate(good, result)
            self.log.debug(
                "batch_written", events=len(events), seconds=round(time.perf_counter() - started, 4),
                topic=records[0].topic, first_offset=records[0].offset, last_offset=records[-1].offset,
            )
        if result.dead:
            for letter in result.dead:
                r = letter.record
                self.log.warning("dead_letter", topic=r.topic, partition=r.partition, offset=r.offset,
                                 event_id=letter.event_id, reason=letter.reason)
            await self._publish_retrying(result.dead)
        return result

    async def _isolate(self, good: Sequence[tuple[RawRecord, Event]], result: BatchResult) -> None:
        """A batch was rejected: write its events one by one, dead-lettering the ones the sink rejects."""
        for record, event in good:
            try:
                await self._write_retrying([event], result)
                result.written += 1
            except PermanentSinkError as exc:
                result.dead.append(DeadLetter(record, str(exc), self.sink.name, event.event_id))

    def close(self) -> None:
        """Close the sink and its thread."""
        try:
            self.sink.close()
        finally:
            self._executor.shutdown(wait=False)


def _header_event_id(record: RawRecord) -> str | None:
    for name, value in record.headers:
        if name == "event_id":
            try:
                return value.decode()
            except UnicodeDecodeError:
                return None
    return None
