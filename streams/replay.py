"""`cdcflow replay`: re-read a read model's topic from `earliest` or a point in time and write it through its sink.

A consumer of its own: group id `cdcflow.replay.<model>.<uuid>`, partitions *assigned* (never subscribed, never
committed), so the live workers' group is neither rebalanced nor moved. The replay captures every partition's
high watermark at start and stops there; records go in batches through the same `BatchProcessor` as the live
worker (decode, validate, write with retry, dead letters to `<topic>.dlq`), so a replay behaves exactly like the
worker would. Sinks are idempotent, so replaying twice changes nothing.

`--from ISO-TIME` starts each partition at the first record whose Kafka timestamp (the time the tailer published
it) is at or after that time (`offsets_for_times`).

`--rebuild` builds the model into a fresh shadow namespace, catches it up once more to the then-current end,
swaps it in (sinks/namespaces.py explains the swap per store: Postgres tables moved in one transaction, Neo4j
relabelled in one transaction, a Cassandra keyspace pointer), then catches the live namespace up on what arrived
meanwhile (idempotent overlap) and drops what was replaced. Readers see the old model, then the whole new one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from cdc.errors import CdcError
from cdc.kafka import ensure_topics, kafka_config, producer_config
from cdc.logs import get_logger
from cdc.schemas import dlq_topic
from cdc.settings import Settings
from sinks.base import Sink, TransientSinkError
from sinks.namespaces import shadow_namespace, swap_in
from sinks.registry import read_model
from streams.dlq import dead_letter_headers
from streams.processor import Backoff, BatchProcessor, DeadLetter, RawRecord
from streams.progress import NoProgress, Progress

log = get_logger(__name__)

EARLIEST = "earliest"

#: Seconds one `consume` call waits for records.
POLL_SECONDS = 0.5


class ReplayError(CdcError):
    """The replay cannot start or go on (unknown topic, broker error)."""


def parse_start(text: str) -> datetime | None:
    """`earliest` → None; an ISO-8601 time (naive = UTC, `Z` allowed) → aware UTC datetime; else ValueError."""
    value = text.strip()
    if value.lower() == EARLIEST:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"--from must be 'earliest' or an ISO-8601 time such as 2026-01-31T12:00:00Z, got {text!r}"
        ) from None
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    if when > datetime.now(UTC):
        raise ValueError(f"--from {text!r} is in the future")
    return when


@dataclass
class Phase:
    """One pass over the topic: offsets [start, end) per partition, into one namespace."""

    name: str
    namespace: str
    ranges: dict[int, tuple[int, int]]
    events: int = 0
    written: int = 0
    dead: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        """Records in range (an upper bound: retention may have removed some)."""
        return sum(max(0, end - start) for start, end in self.ranges.values())


@dataclass
class ReplayReport:
    """What a replay did."""

    read_model: str
    topic: str
    namespace: str
    group_id: str
    start: datetime | None
    rebuild: bool
    phases: list[Phase] = field(default_factory=list)
    shadow: str | None = None
    physical: str | None = None
    retired: str | None = None

    @property
    def events(self) -> int:
        """Records read in all phases."""
        return sum(p.events for p in self.phases)

    @property
    def dead(self) -> int:
        """Records dead-lettered in all phases."""
        return sum(p.dead for p in self.phases)

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.phases)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "read_model": self.read_model, "topic": self.topic, "namespace": self.namespace,
            "group_id": self.group_id, "from": self.start.isoformat() if self.start else EARLIEST,
            "rebuild": self.rebuild, "shadow": self.shadow, "physical": self.physical, "retired": self.retired,
            "events": self.events, "dead_letters": self.dead, "seconds": round(self.seconds, 3),
            "phases": [
                {"name": p.name, "namespace": p.namespace, "events": p.events, "written": p.written,
                 "dead_letters": p.dead, "seconds": round(p.seconds, 3),
                 "ranges": {str(k): list(v) for k, v in sorted(p.ranges.items())}}
                for p in self.phases
            ],
        }


class KafkaDeadLetterPublisher:
    """Dead letters with a confluent-kafka producer, in the live worker's format; returns once acknowledged."""

    def __init__(self, settings: Settings) -> None:
        self._producer = Producer(producer_config(settings))

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        errors: list[str] = []

        def delivered(err: KafkaError | None, _msg: object) -> None:
            if err is not None:
                errors.append(err.str())

        for letter in letters:
            r = letter.record
            self._producer.produce(
                dlq_topic(r.topic), key=r.key, value=r.value,
                headers=dead_letter_headers(letter),  # type: ignore[arg-type]
                on_delivery=delivered,
            )
        left = await asyncio.to_thread(self._producer.flush, 30.0)
        if left or errors:
            raise ReplayError(f"dead letters not acknowledged: {left} outstanding, errors: {errors[:3]}")

    def close(self) -> None:
        self._producer.flush(10.0)


class TopicReader:
    """A consumer of the replay's own group on one topic: assigned partitions, no commits."""

    def __init__(self, settings: Settings, topic: str, group_id: str, timeout: float = 30.0) -> None:
        self.topic = topic
        self.timeout = timeout
        self.consumer = Consumer(kafka_config(
            settings, **{"group.id": group_id, "enable.auto.commit": False, "enable.auto.offset.store": False,
                         "auto.offset.reset": "earliest", "enable.partition.eof": False}
        ))

    def partitions(self) -> list[int]:
        meta = self.consumer.list_topics(self.topic, timeout=self.timeout).topics.get(self.topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise ReplayError(f"topic {self.topic!r} does not exist (or has no partitions)")
        return sorted(meta.partitions)

    def high_watermarks(self, partitions: Sequence[int]) -> dict[int, int]:
        return {
            p: int(self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=self.timeout)[1])
            for p in partitions
        }

    def start_offsets(self, partitions: Sequence[int], start: datetime | None) -> dict[int, int]:
        """Per partition: the low watermark (earliest), or the first offset at/after `start`."""
        lows = {
            p: int(self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=self.timeout)[0])
            for p in partitions
        }
        if start is None:
            return lows
        ms = int(start.timestamp() * 1000)
        found = self.consumer.offsets_for_times(
            [TopicPartition(self.topic, p, ms) for p in partitions], timeout=self.timeout
        )
        highs = self.high_watermarks(partitions)
        out: dict[int, int] = {}
        for tp in found:
            if tp.error is not None:
                raise ReplayError(f"offsets_for_times on {self.topic}[{tp.partition}]: {tp.error}")
            # -1: no record at or after that time in this partition
            out[tp.partition] = highs[tp.partition] if tp.offset < 0 else max(int(tp.offset), lows[tp.partition])
        return out

    def close(self) -> None:
        self.consumer.close()


async def _drain(
    reader: TopicReader, phase: Phase, processor: BatchProcessor, batch_size: int, progress: Progress,
) -> None:
    """Read every partition of `phase` from its start to its end offset, writing batches through `processor`."""
    topic = reader.topic
    consumer = reader.consumer
    bound = log.bind(read_model=processor.sink.name, topic=topic, namespace=phase.namespace, phase=phase.name)
    todo = {p: r for p, r in phase.ranges.items() if r[0] < r[1]}
    progress.phase(phase.name, phase.total)
    started = time.perf_counter()
    if not todo:
        return
    assigned = [TopicPartition(topic, p, start) for p, (start, _) in sorted(todo.items())]
    consumer.assign(assigned)
    consumer.resume(assigned)  # a partition paused at the end of an earlier phase stays paused across assign()
    idle_since = time.monotonic()
    try:
        while todo:
            messages = await asyncio.to_thread(consumer.consume, batch_size, POLL_SECONDS)
            records: list[RawRecord] = []
            for m in messages:
                error = m.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    if error.fatal() or not error.retriable():
                        raise ReplayError(f"reading {topic}: {error.str()}")
                    bound.warning("kafka_error", error=error.str())
                    continue
                partition, offset = m.partition() or 0, m.offset() or 0
                if partition not in todo or offset >= todo[partition][1]:
                    continue
                ts_type, ts = m.timestamp()
                records.append(RawRecord(
                    topic=topic, partition=partition, offset=offset, key=m.key(), value=m.value(),
                    headers=_headers(m.headers()),
                    timestamp=ts / 1000 if ts_type and ts >= 0 else None,
                ))
                if offset + 1 >= todo[partition][1]:
                    del todo[partition]
                    consumer.pause([TopicPartition(topic, partition)])
            if records:
                result = await processor.process(records)
                phase.events += len(records)
                phase.written += result.written
                phase.dead += len(result.dead)
                progress.advance(len(records))
                bound.debug("replay_batch", events=len(records), written=result.written, dead=len(result.dead),
                            partition=records[-1].partition, offset=records[-1].offset,
                            event_id=_event_id(records[-1]))
                idle_since = time.monotonic()
            elif todo:
                # Nothing came: the rest of a partition may be gone (retention) or be control records.
                positions = consumer.position([TopicPartition(topic, p) for p in todo])
                for tp in positions:
                    if tp.offset >= 0 and tp.offset >= todo[tp.partition][1]:
                        del todo[tp.partition]
                if time.monotonic() - idle_since > 30:
                    bound.warning("replay_waiting", partitions=sorted(todo))
                    idle_since = time.monotonic()
    finally:
        consumer.unassign()
        phase.seconds = time.perf_counter() - started
    bound.info("replay_phase_done", events=phase.events, written=phase.written, dead=phase.dead,
               seconds=round(phase.seconds, 3))


def _headers(raw: Any) -> tuple[tuple[str, bytes], ...]:
    out: list[tuple[str, bytes]] = []
    for name, value in raw or []:
        out.append((str(name), value if isinstance(value, bytes) else str(value or "").encode()))
    return tuple(out)


def _event_id(record: RawRecord) -> str | None:
    for name, value in record.headers:
        if name == "event_id":
            return value.decode(errors="replace")
    return None


def replay(
    settings: Settings,
    name: str,
    start: datetime | None = None,
    *,
    rebuild: bool = False,
    topic: str | None = None,
    namespace: str | None = None,
    progress: Progress | None = None,
) -> ReplayReport:
    """Replay read model `name` from `start` (None: earliest) into its live namespace, or rebuild it.

    `topic`/`namespace` redirect it (tests, staging), like `cdcflow worker --topic/--namespace`.
    Raises KeyError (unknown read model), ReplayError (unknown topic, broker error).
    """
    rm = read_model(name)
    topic = topic or rm.topic
    live_ns = namespace or settings.sink_namespace
    group_id = f"cdcflow.replay.{name}.{uuid.uuid4().hex[:12]}"
    report = ReplayReport(name, topic, live_ns, group_id, start, rebuild)
    bar: Progress = progress or NoProgress()
    reader = TopicReader(settings, topic, group_id)
    dead_letters = KafkaDeadLetterPublisher(settings)
    try:
        partitions = reader.partitions()
        starts = reader.start_offsets(partitions, start)
        ends = reader.high_watermarks(partitions)
        ensure_topics(settings, [dlq_topic(topic)])
        log.info("replay_starting", read_model=name, topic=topic, namespace=live_ns, group_id=group_id,
                 rebuild=rebuild, start=start.isoformat() if start else EARLIEST,
                 events=sum(max(0, ends[p] - starts[p]) for p in partitions))
        if not rebuild:
            _run_phase(settings, reader, report, "replay", rm.sink(settings, live_ns), starts, ends, dead_letters,
                       bar)
            return report
        shadow_ns = shadow_namespace(live_ns)
        report.shadow = shadow_ns
        shadow = rm.sink(settings, shadow_ns)
        try:
            _run_phase(settings, reader, report, "rebuild", shadow, starts, ends, dead_letters, bar)
            # what arrived while building: once more into the shadow, so the post-swap gap is small
            later = reader.high_watermarks(partitions)
            _run_phase(settings, reader, report, "catch-up (shadow)", shadow, ends, later, dead_letters, bar)
            live = rm.sink(settings, live_ns)
            try:
                swap = swap_in(settings, live, shadow)
            finally:
                live.close()
        except BaseException:
            _drop_quietly(shadow)
            raise
        finally:
            shadow.close()
        report.physical, report.retired = swap.physical, swap.retired
        if swap.grace_seconds:
            log.info("replay_grace", seconds=swap.grace_seconds, retired=swap.retired)
            time.sleep(swap.grace_seconds)
        # live writers may have written to the replaced model until the swap: apply that to the new one
        final = reader.high_watermarks(partitions)
        _run_phase(settings, reader, report, "catch-up (live)", rm.sink(settings, live_ns), later, final,
                   dead_letters, bar)
        swap.retire()
        return report
    finally:
        reader.close()
        dead_letters.close()
        log.info("replay_done", read_model=name, topic=topic, namespace=live_ns, group_id=group_id,
                 events=report.events, dead=report.dead, seconds=round(report.seconds, 3))


def _run_phase(
    settings: Settings, reader: TopicReader, report: ReplayReport, name: str, sink: Sink,
    starts: dict[int, int], ends: dict[int, int], dead_letters: KafkaDeadLetterPublisher, progress: Progress,
) -> Phase:
    phase = Phase(name, sink.namespace, {p: (starts[p], ends[p]) for p in ends})
    report.phases.append(phase)
    backoff = Backoff(settings.sink_retry_initial, settings.sink_retry_max)
    _setup_retrying(sink, backoff)  # even with nothing to read: a rebuilt empty model is still a model
    processor = BatchProcessor(sink, dead_letters, backoff, max_record_bytes=settings.stream_max_record_bytes)
    try:
        asyncio.run(_drain(reader, phase, processor, settings.stream_batch_size, progress))
    finally:
        processor.close()  # closes the sink's connections; a later call reconnects
    return phase


def _setup_retrying(sink: Sink, backoff: Backoff) -> None:
    next_delay = backoff.delays()
    while True:
        try:
            sink.setup()
            return
        except TransientSinkError as exc:
            delay = next_delay()
            log.warning("sink_unavailable", read_model=sink.name, namespace=sink.namespace, error=str(exc),
                        retry_in=delay)
            time.sleep(delay)


def _drop_quietly(sink: Sink) -> None:
    try:
        sink.drop()
    except Exception as exc:
        log.warning("shadow_not_dropped", namespace=sink.namespace, error=str(exc))
