"""Kafka clients built from settings: admin (topic creation) and producer configuration."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic  # type: ignore[attr-defined]

from cdc.retry import poll_until
from cdc.settings import Settings


def kafka_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """Base librdkafka configuration for every client."""
    # librdkafka logs through Python logging (structlog formats it), not raw lines on stderr.
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "logger": logging.getLogger("rdkafka"),
    }
    config.update(extra)
    return config


def producer_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """An idempotent, batching producer: acks=all, ordered per partition across retries."""
    return kafka_config(
        settings,
        **{
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "batch.num.messages": 10000,
            "compression.type": "lz4",
            "message.timeout.ms": 300000,
            **extra,
        },
    )


def admin_client(settings: Settings) -> AdminClient:
    """A Kafka admin client."""
    return AdminClient(kafka_config(settings))


def ensure_topics(
    settings: Settings,
    topics: Iterable[str],
    partitions: int | None = None,
    timeout: float = 30.0,
    admin: AdminClient | None = None,
) -> list[str]:
    """Create the topics that do not exist yet (idempotent); returns the ones created."""
    admin = admin or admin_client(settings)
    wanted = sorted(set(topics))
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [t for t in wanted if t not in existing]
    if not missing:
        return []
    new = [
        NewTopic(t, num_partitions=partitions or settings.kafka_partitions,
                 replication_factor=settings.kafka_replication_factor, config=topic_config(settings))
        for t in missing
    ]
    created: list[str] = []
    for topic, future in admin.create_topics(new, operation_timeout=timeout).items():
        try:
            future.result()
            created.append(topic)
        except KafkaException as exc:
            if exc.args and getattr(exc.args[0], "code", lambda: None)() == _TOPIC_ALREADY_EXISTS:
                continue
            raise
    _wait_for_leaders(admin, missing, timeout)
    return created


_TOPIC_ALREADY_EXISTS = 36

#: Room for a record's key, headers and framing beyond the event itself (the event's JSON is the record value).
RECORD_OVERHEAD = 64 * 1024


def topic_config(settings: Settings) -> dict[str, str]:
    """Configuration of the topics cdcflow creates: they take every event a service may write."""
    return {"max.message.bytes": str(settings.max_event_bytes + RECORD_OVERHEAD)}


def topic_max_message_bytes(settings: Settings, topic: str, timeout: float = 10.0) -> int:
    """The largest record `topic` accepts (its `max.message.bytes`, which defaults to the broker's)."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    admin = admin_client(settings)  # referenced until the answer is in: a collected client fails its futures
    entries = admin.describe_configs([resource], request_timeout=timeout)[resource].result(timeout=timeout)
    entry = entries.get("max.message.bytes")
    if entry is None or entry.value is None:
        raise KafkaException(f"topic {topic!r} reports no max.message.bytes")
    return int(entry.value)


def _wait_for_leaders(admin: AdminClient, topics: list[str], timeout: float) -> None:
    # Producing right after creation can hit NotLeaderForPartition: wait until every partition has a leader.
    def led() -> bool:
        meta = admin.list_topics(timeout=timeout).topics
        return all(
            t in meta and bool(meta[t].partitions) and all(p.leader >= 0 for p in meta[t].partitions.values())
            for t in topics
        )

    # Past the deadline the producer's own retries take over, as before.
    with contextlib.suppress(TimeoutError):
        poll_until(led, timeout, 0.1, what="partition leaders")


def group_reader(settings: Settings, group: str) -> Consumer:
    """A consumer that only reads a group's committed offsets: it never subscribes nor commits, so it does
    not join (or disturb) the group."""
    return Consumer(kafka_config(settings, **{"group.id": group, "enable.auto.commit": False}))


def topic_offsets(
    consumer: Consumer, topic: str, timeout: float
) -> tuple[dict[int, tuple[int, int]], dict[int, int]] | None:
    """({partition: (low, high)}, {partition: committed}) of `topic`; None when the topic does not exist."""
    meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        return None
    partitions = sorted(meta.partitions)
    marks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout) for p in partitions}
    committed = {
        tp.partition: tp.offset
        for tp in consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout)
        if tp.offset >= 0
    }
    return {p: (int(lo), int(hi)) for p, (lo, hi) in marks.items()}, committed
