"""Find one event's record on Kafka without any stored state: partition from the key, offset from the time.

The tailer writes nothing per event (no delivery report is stored), so the record is found as a producer put
it: the partition follows from the key (the aggregate id) and the producer's partitioner (cdc/partitioner.py);
the first offset to look at comes from `offsets_for_times(occurred_at - margin)` (the record's timestamp is the
tailer's send time, which follows the event's creation, give or take clock skew); then a bounded scan of that
partition reads records (keys compared first, then the `event_id` header) up to `max_records` or its end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, KafkaError, TopicPartition

from cdc.event import H_EVENT_ID
from cdc.kafka import kafka_config, producer_config
from cdc.partitioner import DEFAULT_PARTITIONER, partition_for
from cdc.settings import Settings


@dataclass(frozen=True)
class FoundRecord:
    """Where the record is, and what it holds."""

    topic: str
    partition: int
    offset: int
    timestamp: datetime | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


@dataclass
class ScannedPartition:
    """What was read of one partition: from which offset, how many records, whether its end was reached."""

    partition: int
    start: int
    end: int
    scanned: int = 0
    reached_end: bool = False


@dataclass
class Search:
    """The outcome of a search: the record (or None), and how far the search looked."""

    topic: str
    exists: bool
    partitions: int = 0
    expected_partition: int | None = None
    partitioner: str = DEFAULT_PARTITIONER
    since: datetime | None = None
    found: FoundRecord | None = None
    scanned: list[ScannedPartition] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every partition looked at was read to its end (a miss is then a real miss)."""
        return bool(self.scanned) and all(p.reached_end for p in self.scanned)


def producer_partitioner(settings: Settings) -> str:
    """The partitioner the tailer's producer uses (librdkafka's default unless configured otherwise)."""
    return str(producer_config(settings).get("partitioner", DEFAULT_PARTITIONER))


def find_event_record(
    settings: Settings,
    topic: str,
    key: bytes,
    event_id: str,
    occurred_at: datetime,
    *,
    margin: timedelta = timedelta(minutes=5),
    max_records: int = 200_000,
    all_partitions: bool = False,
    timeout: float = 30.0,
) -> Search:
    """Look for the record of `event_id` (key `key`) on Kafka topic `topic`, from `occurred_at - margin` on.

    Reads the key's partition (every partition with `all_partitions`, or when the partitioner is not keyed),
    at most `max_records` records of each and for at most `timeout` seconds in all."""
    partitioner = producer_partitioner(settings)
    since = occurred_at.astimezone(UTC) - margin
    consumer = Consumer(kafka_config(settings, **{
        "group.id": settings.kafka_group("cdcflow.trace"), "enable.auto.commit": False,
        "enable.partition.eof": True, "auto.offset.reset": "earliest",
    }))
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return Search(topic, exists=False, partitioner=partitioner, since=since)
        count = len(meta.partitions)
        expected = partition_for(key, count, partitioner)
        search = Search(topic, True, count, expected, partitioner, since)
        order = list(range(count)) if expected is None or all_partitions else [expected]
        if expected is not None and all_partitions:
            order.remove(expected)
            order.insert(0, expected)
        deadline = time.monotonic() + timeout
        for partition in order:
            search.found = _scan(consumer, search, partition, key, event_id.encode(), since, max_records, deadline)
            if search.found is not None:
                break
        return search
    finally:
        consumer.close()


def _scan(
    consumer: Consumer, search: Search, partition: int, key: bytes, event_id: bytes, since: datetime,
    max_records: int, deadline: float,
) -> FoundRecord | None:
    topic = search.topic
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
    millis = int(since.timestamp() * 1000)
    start = consumer.offsets_for_times([TopicPartition(topic, partition, millis)], timeout=10)[0].offset
    if start < 0 or start == OFFSET_END:  # no record at or after that time
        start = high
    start = max(int(start), int(low))
    scan = ScannedPartition(partition, start, int(high))
    search.scanned.append(scan)
    if start >= high:
        scan.reached_end = True
        return None
    consumer.assign([TopicPartition(topic, partition, start)])
    try:
        while scan.scanned < max_records and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.5):
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        scan.reached_end = True
                        return None
                    raise RuntimeError(f"reading {topic}[{partition}]: {error.str()}")
                scan.scanned += 1
                if msg.key() == key and _header(msg, H_EVENT_ID) == event_id:
                    return _found(msg)
                if (msg.offset() or 0) + 1 >= high:
                    scan.reached_end = True
                    return None
                if scan.scanned >= max_records:
                    return None
        return None
    finally:
        consumer.unassign()


def _header(msg: Any, name: str) -> bytes | None:
    for k, v in msg.headers() or ():
        if k == name:
            return v  # type: ignore[no-any-return]
    return None


def _found(msg: Any) -> FoundRecord:
    kind, millis = msg.timestamp()
    when = datetime.fromtimestamp(millis / 1000, UTC) if kind and millis > 0 else None
    headers = tuple((k, v or b"") for k, v in msg.headers() or ())
    return FoundRecord(msg.topic(), msg.partition(), msg.offset(), when, msg.key(), msg.value(), headers)
