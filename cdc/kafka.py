"""Kafka clients built from settings: admin (topic creation), producer configuration, and the security
(SASL, TLS) and extra properties every client gets, librdkafka's and Faust's (aiokafka) alike."""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic  # type: ignore[attr-defined]

from cdc.retry import poll_until
from cdc.settings import Settings
from cdc.tls import client_context


class KafkaConfigError(ValueError):
    """A Kafka setting cannot be used (unreadable properties file, bad value)."""


def security_config(settings: Settings) -> dict[str, Any]:
    """librdkafka's security properties from settings: protocol, SASL credentials, TLS files."""
    config: dict[str, Any] = {"security.protocol": settings.kafka_protocol}
    sasl = settings.kafka_sasl
    if sasl is not None and settings.kafka_protocol.startswith("SASL_"):
        mechanism, user, password = sasl
        config.update({"sasl.mechanism": mechanism, "sasl.username": user, "sasl.password": password})
    if settings.kafka_tls:
        if settings.kafka_ssl_ca_file is not None:
            config["ssl.ca.location"] = str(settings.kafka_ssl_ca_file)
        if settings.kafka_ssl_cert_file is not None:
            config["ssl.certificate.location"] = str(settings.kafka_ssl_cert_file)
        if settings.kafka_ssl_key_file is not None:
            config["ssl.key.location"] = str(settings.kafka_ssl_key_file)
        if settings.kafka_ssl_key_password is not None:
            config["ssl.key.password"] = settings.kafka_ssl_key_password.get_secret_value()
        config["ssl.endpoint.identification.algorithm"] = "https" if settings.kafka_ssl_check_hostname else "none"
    return config


def read_properties_file(path: Path) -> dict[str, str]:
    """A Java-style properties file (`key=value` or `key: value` lines, `#`/`!` comments) as a dict."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KafkaConfigError(f"CDCFLOW_KAFKA_PROPERTIES_FILE {path}: cannot read it ({exc.strerror})") from None
    props: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        cut = min((i for i in (line.find("="), line.find(":")) if i > 0), default=-1)
        if cut < 0:
            raise KafkaConfigError(f"CDCFLOW_KAFKA_PROPERTIES_FILE {path}, line {number}: expected key=value")
        props[line[:cut].strip()] = line[cut + 1:].strip()
    return props


def extra_properties(settings: Settings) -> dict[str, Any]:
    """The passthrough librdkafka properties: the properties file, then `kafka_properties` (JSON) over it."""
    props: dict[str, Any] = {}
    if settings.kafka_properties_file is not None:
        props.update(read_properties_file(settings.kafka_properties_file))
    props.update(settings.kafka_properties)
    return props


def kafka_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """Base librdkafka configuration for every client: bootstrap, security, then the passthrough properties."""
    # librdkafka logs through Python logging (structlog formats it), not raw lines on stderr.
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "logger": logging.getLogger("rdkafka"),
        **security_config(settings),
        **extra_properties(settings),
    }
    config.update(extra)
    return config


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of Faust's (aiokafka) clients, from the same settings as librdkafka's; None: no TLS."""
    if not settings.kafka_tls:
        return None
    return client_context(settings.kafka_ssl_ca_file, settings.kafka_ssl_cert_file, settings.kafka_ssl_key_file,
                          settings.kafka_ssl_check_hostname, settings.kafka_ssl_key_password)


def faust_credentials(settings: Settings) -> Any:
    """Faust's `broker_credentials` (SASLCredentials, or an SSL context alone), None for plaintext."""
    import faust  # only the workers need it: the tailer and the CLI should not pay for the import

    context = kafka_ssl_context(settings)
    sasl = settings.kafka_sasl
    if sasl is not None and settings.kafka_protocol.startswith("SASL_"):
        mechanism, user, password = sasl
        return faust.SASLCredentials(username=user, password=password, mechanism=mechanism, ssl_context=context)
    return context


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
    config = topic_config(settings)
    new = [
        NewTopic(t, num_partitions=partitions or settings.kafka_partitions,
                 replication_factor=settings.kafka_replication_factor, config=config)
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
    """Configuration of the topics cdcflow creates: they take every event a service may write, and keep
    `min.insync.replicas` when one is set."""
    config = {"max.message.bytes": str(settings.max_event_bytes + RECORD_OVERHEAD)}
    if settings.kafka_min_insync_replicas is not None:
        config["min.insync.replicas"] = str(settings.kafka_min_insync_replicas)
    return config


def topic_max_message_bytes(settings: Settings, topic: str, timeout: float = 10.0) -> int:
    """The largest record `topic` accepts (its `max.message.bytes`, which defaults to the broker's)."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    admin = admin_client(settings)  # referenced until the answer is in: a collected client fails its futures
    entries = admin.describe_configs([resource], request_timeout=timeout)[resource].result(timeout=timeout)
    entry = entries.get("max.message.bytes")
    if entry is None or entry.value is None:
        raise KafkaException(f"topic {topic!r} reports no max.message.bytes")
    return int(entry.value)


def broker_count(admin: AdminClient, timeout: float) -> int:
    """How many brokers the cluster's metadata lists."""
    return len(admin.list_topics(timeout=timeout).brokers)


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
