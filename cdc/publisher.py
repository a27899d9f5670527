"""The Kafka side of the tailer: an idempotent producer, delivery reports, and what Kafka refuses for good.

Every event goes to its topic (with the deployment's `kafka_topic_prefix`) with key = aggregate_id, so one
aggregate's events share a partition. The
producer is idempotent with acks=all and no delivery timeout (`message.timeout.ms=0`): while the broker is
away, librdkafka retries in order instead of failing a message and letting a later one of the same aggregate
overtake it.

A record Kafka can never take — larger than its topic accepts, invalid, for a topic that is forbidden or cannot
exist — is *refused*: it is marked so in `InFlight`, and the tailer records it as a dead letter of its own and
goes on. What can be known before sending (the record is larger than the topic's `max.message.bytes`) is
refused without sending. Any other delivery error means the producer is broken: the session restarts from
the last checkpoint with a fresh producer.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from cdc.acks import InFlight, Sent
from cdc.errors import CdcError
from cdc.event import Event
from cdc.kafka import RECORD_OVERHEAD, ensure_topics, producer_config, topic_max_message_bytes
from cdc.logs import get_logger
from cdc.settings import Settings

# Broker and client errors that are a property of the record or its topic: retrying never helps.
REFUSALS = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_RECORD,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.TOPIC_EXCEPTION,
    KafkaError.POLICY_VIOLATION,
    KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError._INVALID_ARG,
})


# Refusals for size: the broker refuses a whole batch when one record in it is too large (or when the topic's
# limit shrank since we read it), so the other records of that batch get them too.
SIZE_REFUSALS = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})


class DeliveryError(CdcError):
    """The producer failed in a way that is not the record's fault; the session restarts from the checkpoint."""


class TopicRefused(CdcError):
    """A topic cannot be used (it cannot be created, or its configuration cannot be read): its records are
    refused."""


AckHook = Callable[[Sent], None]


class Publisher:
    """An idempotent, batching producer with a background thread serving delivery reports."""

    def __init__(self, settings: Settings, *, source: str = "", on_ack: AckHook | None = None) -> None:
        self.settings = settings
        self.max_record_bytes = settings.max_event_bytes + RECORD_OVERHEAD
        self._producer = Producer(producer_config(
            settings,
            **{
                "message.timeout.ms": 0,  # infinite: retry in order while the broker is away
                "linger.ms": settings.tailer_linger_ms,
                "message.max.bytes": self.max_record_bytes,
                "queue.buffering.max.messages": max(100000, settings.tailer_max_in_flight * 2),
                "queue.buffering.max.kbytes": 1048576,
                "reconnect.backoff.max.ms": 1000,
                "error_cb": self._on_error,
            },
        ))
        self._limits: dict[str, int] = {}
        self._topic_prefix = settings.kafka_topic_prefix
        self._refused_topics: dict[str, str] = {}
        self._fatal: str | None = None
        self._on_ack = on_ack
        self._stop = threading.Event()
        self._log = get_logger("cdc.publisher", source=source)
        # Delivery reports are served here, so acknowledgements arrive while the outbox thread waits on MongoDB.
        self._poller = threading.Thread(target=self._poll_loop, name=f"kafka-poll-{source}", daemon=True)
        self._poller.start()

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err.str()
            self._log.error("producer_fatal_error", error=err.str())
        elif err.code() not in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
            self._log.warning("producer_error", error=err.str())

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    @property
    def fatal(self) -> str | None:
        return self._fatal

    def kafka_topic(self, topic: str) -> str:
        """The Kafka topic the records of logical topic `topic` go to (the deployment's prefix applied)."""
        return self._topic_prefix + topic

    def topic_limit(self, topic: str) -> int:
        """The largest record `topic` takes (created with our limit if missing); TopicRefused if unusable."""
        limit = self._limits.get(topic)
        if limit is not None:
            return limit
        refused = self._refused_topics.get(topic)
        if refused is not None:
            raise TopicRefused(refused)
        try:
            ensure_topics(self.settings, [topic], partitions=self.settings.kafka_partitions)
            limit = min(topic_max_message_bytes(self.settings, topic), self.max_record_bytes)
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            # Not INVALID_REPLICATION_FACTOR: a broker that has just restarted is fenced for a moment and answers
            # it for any topic (the soak found every event of a topic dead-lettered so); the session retries.
            if error is not None and (error.code() in REFUSALS or error.code() in (
                KafkaError.INVALID_PARTITIONS, KafkaError.INVALID_CONFIG,
            )):
                reason = f"topic {topic!r} cannot be used: {error.str()}"
                self._refused_topics[topic] = reason
                raise TopicRefused(reason) from exc
            raise
        self._limits[topic] = limit
        return limit

    def _too_large_alone(self, topic: str, size: int) -> bool:
        """True when a record of `size` bytes is larger than `topic` accepts now (read afresh from the broker)."""
        try:
            return size > min(topic_max_message_bytes(self.settings, topic, timeout=5.0), self.max_record_bytes)
        except Exception as exc:  # cannot tell: resend (a record really too large is refused before sending next time)
            self._log.warning("topic_limit_unreadable", topic=topic, error=repr(exc))
            return False

    def send(
        self,
        entry: Sent,
        value: bytes,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        inflight: InFlight,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Hand one record to the producer (or refuse it); blocks while the producer's queue is full.

        False if told to stop meanwhile (the record was not sent and is not tracked). `entry.topic` is the
        logical topic (the event's); the record goes to it with the deployment's prefix."""
        topic = self._topic_prefix + entry.topic if self._topic_prefix else entry.topic
        inflight.add(entry)
        try:
            limit = self.topic_limit(topic)
        except TopicRefused as exc:
            inflight.refuse(entry, str(exc), time.time())
            return True
        size = len(value) + (len(key) if key else 0) + sum(len(k) + len(v) for k, v in headers) + 100
        if size > limit:
            inflight.refuse(entry, f"record of {size} bytes is larger than topic {topic!r} accepts ({limit} bytes, "
                                   f"max.message.bytes)", time.time())
            return True
        on_ack = self._on_ack
        log = self._log

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                inflight.ack(entry, time.time())
                if on_ack is not None:
                    on_ack(entry)
            elif err.code() in SIZE_REFUSALS and not self._too_large_alone(topic, size):
                # Not this record's fault: start over from the checkpoint. The new session reads the topic's
                # limit afresh and refuses the oversized record before sending it, so this one then goes.
                log.warning("batch_refused_for_size", event_id=entry.event_id, topic=topic, size=size,
                            error=err.str())
                inflight.fail(f"a batch refused for size ({err.str()}); resending")
            elif err.code() in REFUSALS:
                inflight.refuse(entry, f"Kafka refused it: {err.str()}", time.time())
            else:
                log.error("delivery_failed", event_id=entry.event_id, topic=topic, error=err.str())
                inflight.fail(err.str())

        record_headers = headers if isinstance(headers, list) else list(headers)
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=record_headers, on_delivery=delivered)
                return True
            except BufferError:
                if should_stop():
                    inflight.entries.pop()  # the last one added: ours, never sent
                    return False
                time.sleep(0.01)
            except KafkaException as exc:
                error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if error is None or error.code() not in REFUSALS | {KafkaError.MSG_SIZE_TOO_LARGE}:
                    raise
                inflight.refuse(entry, f"Kafka refused it: {error.str()}", time.time())
                return True

    def send_event(
        self, event: Event, entry: Sent, inflight: InFlight, should_stop: Callable[[], bool] = lambda: False
    ) -> bool:
        """`send` of an event: value = its JSON, key = its aggregate id, headers = its Kafka headers."""
        return self.send(entry, event.to_json(), event.kafka_key(), event.kafka_headers(), inflight, should_stop)

    def outstanding(self) -> int:
        """Records handed to the producer and not yet acknowledged or failed."""
        return len(self._producer)

    def flush(self, timeout: float) -> int:
        """Wait up to `timeout` for every acknowledgement; returns how many are still outstanding."""
        return int(self._producer.flush(timeout))

    def close(self, timeout: float = 10.0) -> None:
        """Flush what can be flushed within `timeout`, drop the rest (it is re-sent from the checkpoint)."""
        with contextlib.suppress(Exception):
            self._producer.flush(timeout)
        with contextlib.suppress(Exception):
            self._producer.purge()
            self._producer.flush(0)
        self._stop.set()
        self._poller.join(timeout=2)
