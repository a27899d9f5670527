"""`cdcflow replay`: re-read a read model's topic from `earliest` or a point in time and write it through its sink.

A consumer of its own: group id `cdcflow.replay.<model>.<uuid>`, partitions *assigned* (never subscribed, never
committed), so the live workers' group is neither rebalanced nor moved. The replay captures every partition's
high watermark at start and stops there; records go in batches through the same `BatchProcessor` as the live
worker (decode, validate, write with retry, dead letters to `<topic>.dlq`), so a replay behaves exactly like the
worker would. Sinks are idempotent, so replaying twice changes nothing.

`--from ISO-TIME` starts each partition at the first record whose Kafka timestamp (the time the tailer published
it) is at or after that time (`offsets_for_times`).

`--until ISO-TIME` stops each partition before its first record whose Kafka timestamp is after that time
(`offsets_for_times` again): the model is built "as of" that time. Not with `--rebuild`: live workers would go on
from their own offsets on top of a model of the past, so an as-of model goes into a namespace of its own
(`--namespace`), where the queries can read it (`cdcflow query ... --namespace`).

`--rebuild` builds the model into a fresh shadow namespace, catches it up once more to the then-current end,
swaps it in (sinks/namespaces.py explains the swap per store: Postgres tables moved in one transaction, Neo4j
relabelled in one transaction, a Cassandra keyspace pointer), then catches the live namespace up on what arrived
meanwhile (idempotent overlap) and drops what was replaced. Readers see the old model, then the whole new one.
With `verify`, the shadow is compared with the live model before the swap (streams/verify.py says what counts as
explained); an unexplained difference refuses the swap (VerifyError), drops the shadow and leaves the live model
as it was.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from cdc.errors import CdcError
from cdc.kafka import ensure_topics, kafka_config, producer_config
from cdc.logs import get_logger
from cdc.retry import Backoff
from cdc.schemas import dlq_topic
from cdc.settings import Settings
from sinks.base import Sink, TransientSinkError
from sinks.namespaces import active_namespace, shadow_namespace, swap_in
from sinks.registry import read_model
from streams.dlq import dead_letter_headers
from streams.processor import BatchProcessor, DeadLetter, RawRecord
from streams.progress import NoProgress, Progress
from streams.verify import Verification, collect, judge

log = get_logger(__name__)

EARLIEST = "earliest"

#: Seconds one `consume` call waits for records.
POLL_SECONDS = 0.5


class ReplayError(CdcError):
    """The replay cannot start or go on (unknown topic, broker error)."""


class VerifyError(ReplayError):
    """`--verify` found differences between the shadow and the live model that nothing explains: no swap."""

    def __init__(self, verification: Verification) -> None:
        super().__init__(verification.message())
        self.verification = verification


def parse_start(text: str) -> datetime | None:
    """`earliest` → None; an ISO-8601 time (naive = UTC, `Z` allowed) → aware UTC datetime; else ValueError."""
    if text.strip().lower() == EARLIEST:
        return None
    return _parse_time(text, "--from", "'earliest' or an ISO-8601 time")


def parse_until(text: str, start: datetime | None = None) -> datetime:
    """An ISO-8601 time (naive = UTC, `Z` allowed) → aware UTC datetime, not in the future and not before
    `start`; else ValueError."""
    until = _parse_time(text, "--until", "an ISO-8601 time")
    if start is not None and until < start:
        raise ValueError(f"--until {text!r} is before --from ({start.isoformat()})")
    return until


def _parse_time(text: str, flag: str, what: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{flag} must be {what} such as 2026-01-31T12:00:00Z, got {text!r}") from None
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    if when > datetime.now(UTC):
        raise ValueError(f"{flag} {text!r} is in the future")
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
    until: datetime | None = None
    verification: Verification | None = None

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
            "until": self.until.isoformat() if self.until else None,
            "verification": self.verification.to_json() if self.verification else None,
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
        found = self._offsets_at(partitions, int(start.timestamp() * 1000))
        highs = self.high_watermarks(partitions)
        # None: no record at or after that time in this partition
        return {p: highs[p] if offset is None else max(offset, lows[p]) for p, offset in found.items()}

    def end_offsets(self, partitions: Sequence[int], until: datetime | None) -> dict[int, int]:
        """Per partition: the high watermark, or (with `until`) the first offset whose record is after `until`."""
        highs = self.high_watermarks(partitions)
        if until is None:
            return highs
        # Kafka times are whole milliseconds: the first record after `until` is at its millisecond + 1 or later
        found = self._offsets_at(partitions, int(until.timestamp() * 1000) + 1)
        # None: no record after that time in this partition (yet): up to the end seen now
        return {p: highs[p] if offset is None else min(offset, highs[p]) for p, offset in found.items()}

    def _offsets_at(self, partitions: Sequence[int], ms: int) -> dict[int, int | None]:
        """Per partition: the first offset whose record's timestamp is at or after `ms` (None: no such record)."""
        found = self.consumer.offsets_for_times(
            [TopicPartition(self.topic, p, ms) for p in partitions], timeout=self.timeout
        )
        out: dict[int, int | None] = {}
        for tp in found:
            if tp.error is not None:
                raise ReplayError(f"offsets_for_times on {self.topic}[{tp.partition}]: {tp.error}")
            out[tp.partition] = None if tp.offset < 0 else int(tp.offset)
        return out

    def keys_between(self, starts: dict[int, int], ends: dict[int, int]) -> set[str]:
        """The record keys (aggregate ids) in [start, end) of each partition: what arrived after a point."""
        todo = {p: (starts[p], ends[p]) for p in ends if starts[p] < ends[p]}
        keys: set[str] = set()
        if not todo:
            return keys
        assigned = [TopicPartition(self.topic, p, start) for p, (start, _) in sorted(todo.items())]
        self.consumer.assign(assigned)
        self.consumer.resume(assigned)
        deadline = time.monotonic() + self.timeout
        try:
            while todo:
                messages = self.consumer.consume(500, POLL_SECONDS)
                for m in messages:
                    error = m.error()
                    if error is not None:
                        if error.fatal() or not error.retriable():
                            raise ReplayError(f"reading {self.topic}: {error.str()}")
                        continue
                    partition, offset = m.partition() or 0, m.offset() or 0
                    if partition not in todo or offset >= todo[partition][1]:
                        continue
                    key = m.key()
                    keys.add(key.decode(errors="replace") if isinstance(key, bytes) else str(key or ""))
                    if offset + 1 >= todo[partition][1]:
                        del todo[partition]
                        self.consumer.pause([TopicPartition(self.topic, partition)])
                if messages:
                    deadline = time.monotonic() + self.timeout
                    continue
                for tp in self.consumer.position([TopicPartition(self.topic, p) for p in todo]):
                    if tp.offset >= 0 and tp.offset >= todo[tp.partition][1]:
                        del todo[tp.partition]  # the rest is gone (retention) or control records
                if todo and time.monotonic() > deadline:
                    raise ReplayError(f"reading {self.topic}: no records for {self.timeout:g} s on "
                                      f"partition(s) {sorted(todo)}")
        finally:
            self.consumer.unassign()
        return keys

    def close(self) -> None:
        self.consumer.close()


def committed_offsets(settings: Settings, group: str, topic: str, partitions: Sequence[int]) -> dict[int, int]:
    """The consumer group's committed offsets on `topic` (negative where it committed nothing); joins nothing."""
    consumer = Consumer(kafka_config(settings, **{"group.id": group, "enable.auto.commit": False}))
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=30)
    except KafkaException as exc:
        raise ReplayError(f"reading the committed offsets of group {group!r}: {exc}") from exc
    finally:
        consumer.close()
    return {tp.partition: int(tp.offset) for tp in found}


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


@dataclass(frozen=True)
class ReplayPlan:
    """What a replay would do, read before it does it (`--dry-run`, the `--rebuild` confirmation)."""

    read_model: str
    topic: str
    namespace: str
    physical: str
    rebuild: bool
    start: datetime | None
    partitions: int
    events: int
    until: datetime | None = None
    verify: bool = False

    def describe(self) -> str:
        """One paragraph for a person."""
        start = EARLIEST if self.start is None else self.start.isoformat()
        until = "" if self.until is None else f" until {self.until.isoformat()}"
        source = (f"{self.events} record(s) of {self.topic} ({self.partitions} partition(s), from {start}{until})")
        where = self.namespace if self.physical == self.namespace else f"{self.namespace} (now {self.physical})"
        if not self.rebuild:
            return f"{self.read_model}: would write {source} into the live model {where}, idempotently."
        check = f"compare it with the live model {where} and, if every difference is explained, " if self.verify else ""
        return (f"{self.read_model}: would build a new model from {source} in a fresh shadow namespace, then {check}"
                f"swap it in for the live model {where}: the live model's current content is replaced and "
                f"dropped; what arrives meanwhile is applied to the new one.")

    def to_json(self) -> dict[str, Any]:
        """The plan as a JSON object."""
        return {"read_model": self.read_model, "topic": self.topic, "namespace": self.namespace,
                "physical": self.physical, "rebuild": self.rebuild,
                "start": None if self.start is None else self.start.isoformat(),
                "until": None if self.until is None else self.until.isoformat(), "verify": self.verify,
                "partitions": self.partitions, "events": self.events}


def plan_replay(
    settings: Settings, name: str, start: datetime | None = None, *, rebuild: bool = False,
    topic: str | None = None, namespace: str | None = None, until: datetime | None = None, verify: bool = False,
) -> ReplayPlan:
    """What `replay` with the same arguments would read and replace; reads offsets only, writes nothing."""
    _check_options(rebuild, until, verify)
    rm = read_model(name)
    topic = topic or settings.kafka_topic(rm.topic)
    live_ns = namespace or settings.sink_namespace
    reader = TopicReader(settings, topic, settings.kafka_group(f"cdcflow.replay.plan.{uuid.uuid4().hex[:12]}"))
    try:
        partitions = reader.partitions()
        starts = reader.start_offsets(partitions, start)
        ends = reader.end_offsets(partitions, until)
    finally:
        reader.close()
    return ReplayPlan(name, topic, live_ns, active_namespace(settings, name, live_ns), rebuild, start,
                      len(partitions), sum(max(0, ends[p] - starts[p]) for p in partitions), until, verify)


def _check_options(rebuild: bool, until: datetime | None, verify: bool) -> None:
    if until is not None and rebuild:
        raise ValueError(
            "--until cannot be used with --rebuild: the live workers would go on from their own offsets on top of "
            "a model of the past; build the as-of model into a namespace of its own instead "
            "(--until ... --namespace NAME) and query it there"
        )
    if verify and not rebuild:
        raise ValueError("--verify compares a rebuilt shadow with the live model before the swap: it needs --rebuild")


def replay(
    settings: Settings,
    name: str,
    start: datetime | None = None,
    *,
    rebuild: bool = False,
    topic: str | None = None,
    namespace: str | None = None,
    progress: Progress | None = None,
    until: datetime | None = None,
    verify: bool = False,
    group: str | None = None,
) -> ReplayReport:
    """Replay read model `name` from `start` (None: earliest) into its live namespace, or rebuild it.

    `until`: each partition stops before its first record published after it (not with `rebuild`).
    `verify` (with `rebuild`): compare the shadow with the live model before the swap and refuse it on an
    unexplained difference; `group` is the live workers' consumer group (default: the read model's), whose
    committed offsets tell whether the live model should already have what the shadow has.
    `topic` (a Kafka topic, taken as is; default: the deployment's, with `kafka_topic_prefix`) and `namespace`
    redirect it (tests, staging), like `cdcflow worker --topic/--namespace`.
    Raises KeyError (unknown read model), ValueError (options that do not go together), ReplayError (unknown
    topic, broker error), VerifyError (the verify refused the swap; the shadow is dropped, the live model kept).
    """
    _check_options(rebuild, until, verify)
    rm = read_model(name)
    topic = topic or settings.kafka_topic(rm.topic)
    live_ns = namespace or settings.sink_namespace
    group_id = settings.kafka_group(f"cdcflow.replay.{name}.{uuid.uuid4().hex[:12]}")
    report = ReplayReport(name, topic, live_ns, group_id, start, rebuild, until=until)
    bar: Progress = progress or NoProgress()
    reader = TopicReader(settings, topic, group_id)
    dead_letters = KafkaDeadLetterPublisher(settings)
    try:
        partitions = reader.partitions()
        starts = reader.start_offsets(partitions, start)
        ends = reader.end_offsets(partitions, until)
        ensure_topics(settings, [dlq_topic(topic)])
        log.info("replay_starting", read_model=name, topic=topic, namespace=live_ns, group_id=group_id,
                 rebuild=rebuild, start=start.isoformat() if start else EARLIEST,
                 until=until.isoformat() if until else None, verify=verify,
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
                if verify:
                    live_group = group or settings.kafka_group(rm.consumer_group())
                    report.verification = _verify(settings, reader, live, shadow, live_group, later, bar)
                    if not report.verification.ok:
                        raise VerifyError(report.verification)
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


def _verify(
    settings: Settings, reader: TopicReader, live: Sink, shadow: Sink, group: str, ends: dict[int, int],
    progress: Progress,
) -> Verification:
    """Compare `shadow` (complete up to `ends`) with the moving `live` model; see streams/verify.py."""
    bound = log.bind(read_model=live.name, topic=reader.topic, namespace=live.namespace, shadow=shadow.namespace)
    progress.phase("verify", 0)
    started = time.perf_counter()
    # read before the live model: offsets the workers had committed by then are in what is compared
    committed = committed_offsets(settings, group, reader.topic, sorted(ends))
    caught_up = all(committed.get(p, -1) >= end for p, end in ends.items())
    equal, differences, overflow = collect(live.entries(), shadow.entries())
    # read after it: whatever the live workers applied while it was read arrived before this end
    later = reader.keys_between(ends, reader.high_watermarks(sorted(ends))) if differences else set()
    result = judge(equal, differences, later=later, live_caught_up=caught_up, overflow=overflow)
    level = bound.info if result.ok else bound.warning
    level("replay_verified", ok=result.ok, equal=result.equal, explained=dict(result.explained),
          unexplained=result.unexplained, live_caught_up=caught_up, group=group,
          seconds=round(time.perf_counter() - started, 3))
    return result


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
