"""Dead letters: the record format on `<topic>.dlq`, listing them, and replaying them after a fix.

A dead letter keeps the original key, value bytes and headers, and adds `dlq_*` headers: the reason, the
read model that refused it, the source topic/partition/offset and the time. It also carries Kafka Connect's
`__connect.errors.*` headers (source topic, partition, offset, stage, exception class and message, the
"connector": the read model), so tools written for Connect's dead-letter queues read them too. Two read models
share `orders`, so one bad record can be dead-lettered twice (once per read model); replay re-drives each
source record once.

Topics are the deployment's (`kafka_topic_prefix`): `<prefix><topic>.dlq`; `--topic` takes the logical name.

Replay re-produces the original record to its source topic (every read model of that topic sees it again,
which is harmless: sinks are idempotent) and then commits its progress in the consumer group
`<group prefix>cdcflow.dlq-replay.<dlq topic>`, so a second replay only re-drives letters that arrived since.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from cdc.kafka import kafka_config, producer_config
from cdc.logs import get_logger
from cdc.schemas import TOPICS, dlq_topic
from cdc.settings import Settings
from streams.processor import STAGE_SINK, DeadLetter

log = get_logger(__name__)

H_REASON = "dlq_reason"
H_READ_MODEL = "dlq_read_model"
H_SOURCE_TOPIC = "dlq_source_topic"
H_SOURCE_PARTITION = "dlq_source_partition"
H_SOURCE_OFFSET = "dlq_source_offset"
H_FAILED_AT = "dlq_failed_at"
H_EVENT_ID = "dlq_event_id"
H_REPLAYED_FROM = "dlq_replayed_from"
_DLQ_HEADERS = {H_REASON, H_READ_MODEL, H_SOURCE_TOPIC, H_SOURCE_PARTITION, H_SOURCE_OFFSET, H_FAILED_AT,
                H_EVENT_ID}
# Kafka Connect's dead-letter context headers (its DeadLetterQueueReporter), values as UTF-8 text.
CONNECT_PREFIX = "__connect.errors."
H_CONNECT_TOPIC = CONNECT_PREFIX + "topic"
H_CONNECT_PARTITION = CONNECT_PREFIX + "partition"
H_CONNECT_OFFSET = CONNECT_PREFIX + "offset"
H_CONNECT_CONNECTOR = CONNECT_PREFIX + "connector.name"
H_CONNECT_TASK = CONNECT_PREFIX + "task.id"
H_CONNECT_STAGE = CONNECT_PREFIX + "stage"
H_CONNECT_CLASS = CONNECT_PREFIX + "class.name"
H_CONNECT_EXCEPTION = CONNECT_PREFIX + "exception.class.name"
H_CONNECT_MESSAGE = CONNECT_PREFIX + "exception.message"


def _added_here(name: str) -> bool:
    """A header this module adds to a dead letter (dropped from the original ones, and again on re-drive)."""
    return name in _DLQ_HEADERS or name.startswith(CONNECT_PREFIX)


#: Longest reason kept in a header.
MAX_REASON = 2000


def dead_letter_headers(letter: DeadLetter, now: datetime | None = None) -> list[tuple[str, bytes]]:
    """The headers of a dead-letter record: the original ones plus the dlq_* ones."""
    r = letter.record
    reason = letter.reason[:MAX_REASON].encode()
    headers = [(k, v) for k, v in r.headers if not _added_here(k)]
    headers += [
        (H_REASON, reason),
        (H_READ_MODEL, letter.read_model.encode()),
        (H_SOURCE_TOPIC, r.topic.encode()),
        (H_SOURCE_PARTITION, str(r.partition).encode()),
        (H_SOURCE_OFFSET, str(r.offset).encode()),
        (H_FAILED_AT, (now or datetime.now(UTC)).isoformat().encode()),
    ]
    if letter.event_id:
        headers.append((H_EVENT_ID, letter.event_id.encode()))
    headers += [
        (H_CONNECT_TOPIC, r.topic.encode()),
        (H_CONNECT_PARTITION, str(r.partition).encode()),
        (H_CONNECT_OFFSET, str(r.offset).encode()),
        (H_CONNECT_CONNECTOR, letter.read_model.encode()),
        (H_CONNECT_TASK, b"0"),
        (H_CONNECT_STAGE, letter.stage.encode()),
        (H_CONNECT_CLASS, (_SINK_CLASS if letter.stage == STAGE_SINK else _DECODER_CLASS).encode()),
        (H_CONNECT_EXCEPTION, (letter.error_class or "cdc.errors.InvalidEventError").encode()),
        (H_CONNECT_MESSAGE, reason),
    ]
    return headers


# What ran at each stage (`__connect.errors.class.name`): the decoder, or the read model's sink.
_DECODER_CLASS = "streams.processor.decode"
_SINK_CLASS = "sinks.base.Sink"


def replay_group(settings: Settings, topic: str) -> str:
    """The consumer group that records replay progress on a dead-letter topic (a Kafka topic name)."""
    return settings.kafka_group(f"cdcflow.dlq-replay.{topic}")


@dataclass(frozen=True)
class StoredDeadLetter:
    """A dead letter as read back from a `.dlq` topic."""

    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    source_topic: str
    source_partition: int
    source_offset: int
    reason: str
    read_model: str
    failed_at: str
    event_id: str | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]  # the original record's headers
    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready data (the value as text when it decodes, else hex)."""
        value: str | None
        if self.value is None:
            value = None
        else:
            try:
                value = self.value.decode()
            except UnicodeDecodeError:
                value = "hex:" + self.value.hex()
        return {
            "dlq_topic": self.dlq_topic, "dlq_partition": self.dlq_partition, "dlq_offset": self.dlq_offset,
            "source_topic": self.source_topic, "source_partition": self.source_partition,
            "source_offset": self.source_offset, "reason": self.reason, "read_model": self.read_model,
            "failed_at": self.failed_at, "event_id": self.event_id,
            "key": None if self.key is None else self.key.decode(errors="replace"), "value": value,
            "replayed": self.replayed,
        }


def _parse(msg: Any, replayed_below: dict[int, int]) -> StoredDeadLetter:
    raw = msg.headers() or []
    extra = {k: (v or b"").decode(errors="replace") for k, v in raw if k in _DLQ_HEADERS}
    original = tuple((k, v or b"") for k, v in raw if not _added_here(k))
    return StoredDeadLetter(
        dlq_topic=msg.topic(),
        dlq_partition=msg.partition(),
        dlq_offset=msg.offset(),
        source_topic=extra.get(H_SOURCE_TOPIC, ""),
        source_partition=int(extra.get(H_SOURCE_PARTITION, "-1")),
        source_offset=int(extra.get(H_SOURCE_OFFSET, "-1")),
        reason=extra.get(H_REASON, ""),
        read_model=extra.get(H_READ_MODEL, ""),
        failed_at=extra.get(H_FAILED_AT, ""),
        event_id=extra.get(H_EVENT_ID),
        key=msg.key(),
        value=msg.value(),
        headers=original,
        replayed=msg.offset() < replayed_below.get(msg.partition(), 0),
    )


def _read(
    settings: Settings, topic: str, *, from_committed: bool, timeout: float
) -> tuple[list[StoredDeadLetter], dict[int, int], Consumer]:
    """The letters of `topic` (all, or after the replay group's commit), the end offsets, the consumer."""
    consumer = Consumer(kafka_config(
        settings, **{"group.id": replay_group(settings, topic), "enable.auto.commit": False,
                     "auto.offset.reset": "earliest", "enable.partition.eof": False}
    ))
    meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        return [], {}, consumer
    partitions = sorted(meta.partitions)
    committed = {
        tp.partition: tp.offset
        for tp in consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout)
        if tp.offset >= 0
    }
    ends: dict[int, int] = {}
    starts: dict[int, int] = {}
    for p in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
        ends[p] = high
        start = committed.get(p, low) if from_committed else low
        starts[p] = max(start, low)
    todo = {p for p in partitions if starts[p] < ends[p]}
    letters: list[StoredDeadLetter] = []
    if todo:
        consumer.assign([TopicPartition(topic, p, starts[p] if starts[p] > 0 else OFFSET_BEGINNING)
                         for p in sorted(todo)])
        deadline = time.monotonic() + timeout
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: partitions {sorted(todo)} not read in {timeout}s")
            for msg in consumer.consume(500, timeout=0.5):
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise RuntimeError(f"reading {topic}: {error}")
                partition, offset = msg.partition() or 0, msg.offset() or 0
                if offset < ends[partition]:
                    letters.append(_parse(msg, committed))
                if offset + 1 >= ends[partition]:
                    todo.discard(partition)
    letters.sort(key=lambda x: (x.dlq_partition, x.dlq_offset))
    return letters, ends, consumer


def dlq_topics(settings: Settings, topics: Iterable[str] | None = None) -> list[str]:
    """The Kafka dead-letter topics of logical `topics` (default: all; a name ending in `.dlq` is taken as is)."""
    return [t if t.endswith(".dlq") else dlq_topic(settings.kafka_topic(t)) for t in (topics or TOPICS)]


def list_dead_letters(
    settings: Settings, topics: Iterable[str] | None = None, timeout: float = 30.0
) -> list[StoredDeadLetter]:
    """Every dead letter of the given source topics (default: all), `replayed` when already re-driven."""
    out: list[StoredDeadLetter] = []
    for topic in dlq_topics(settings, topics):
        letters, _, consumer = _read(settings, topic, from_committed=False, timeout=timeout)
        consumer.close()
        out.extend(letters)
    return out


@dataclass
class ReplayReport:
    """What a replay did, per dead-letter topic."""

    replayed: dict[str, int] = field(default_factory=dict)
    skipped_duplicates: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Records re-driven in all."""
        return sum(self.replayed.values())


def replay_dead_letters(
    settings: Settings, topics: Iterable[str] | None = None, timeout: float = 30.0
) -> ReplayReport:
    """Re-drive the not-yet-replayed dead letters of `topics` (default: all) to their source topics."""
    report = ReplayReport()
    for topic in dlq_topics(settings, topics):
        letters, ends, consumer = _read(settings, topic, from_committed=True, timeout=timeout)
        try:
            count, dupes = _redrive(settings, topic, letters, timeout)
            if ends:
                done = [TopicPartition(topic, p, o) for p, o in ends.items()]
                consumer.commit(offsets=done, asynchronous=False)
        finally:
            consumer.close()
        report.replayed[topic] = count
        report.skipped_duplicates[topic] = dupes
        log.info("dlq_replayed", topic=topic, replayed=count, skipped_duplicates=dupes)
    return report


def _redrive(
    settings: Settings, topic: str, letters: Sequence[StoredDeadLetter], timeout: float
) -> tuple[int, int]:
    seen: set[tuple[str, int, int]] = set()
    failures: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    producer = Producer(producer_config(settings))
    count = dupes = 0
    for letter in letters:
        if not letter.source_topic:
            continue
        source = (letter.source_topic, letter.source_partition, letter.source_offset)
        if source in seen:
            dupes += 1
            continue
        seen.add(source)
        headers: list[tuple[str, str | bytes | None]] = [
            (k, v) for k, v in letter.headers if k != H_REPLAYED_FROM
        ]
        headers.append((H_REPLAYED_FROM, f"{topic}:{letter.dlq_partition}:{letter.dlq_offset}".encode()))
        producer.produce(letter.source_topic, key=letter.key, value=letter.value, headers=headers,
                         on_delivery=on_delivery)
        producer.poll(0)
        count += 1
    remaining = producer.flush(timeout)
    if remaining or failures:
        raise RuntimeError(f"replay of {topic}: {remaining} undelivered, errors: {failures[:3]}")
    return count, dupes

