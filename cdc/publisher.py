"""The Kafka side of the tailer: an idempotent producer and delivery tracking.

Every event goes to its topic with key = aggregate_id, so one aggregate's events share a partition. The
producer is idempotent with acks=all and no delivery timeout (`message.timeout.ms=0`): while the broker is
away, librdkafka retries in order instead of failing a message and letting a later one of the same aggregate
overtake it. A delivery error that still happens (a fatal producer error, a message too large) fails the
tailer's session, which re-sends everything after the last checkpoint, in order, with a fresh producer.

`InFlight` tracks sent events in read order; the checkpoint may only advance over its acknowledged prefix.

Two producers: one with a short linger for latency, one with a long linger for draining a backlog (fewer,
larger requests). Events go through one of them at a time, and the tailer switches only once the other has
nothing left in flight, so no event overtakes an earlier one of its aggregate.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from cdc.errors import CdcError
from cdc.event import Event
from cdc.kafka import ensure_topics, producer_config
from cdc.logs import get_logger
from cdc.settings import Settings

Document = dict[str, Any]


class DeliveryError(CdcError):
    """Kafka refused an event for good; the session restarts from the last checkpoint."""


@dataclass(slots=True)
class Sent:
    """One event handed to the producer: its resume token, and whether Kafka acknowledged it."""

    event_id: str
    token: Mapping[str, Any] | None
    committed_at: datetime | None
    acked: bool = False
    ack_time: float = 0.0
    error: str | None = None


@dataclass
class InFlight:
    """Sent events in stream order; `take_acked_prefix()` yields what may be checkpointed.

    One thread adds and takes (the tailer's), the producer's delivery thread acks. deque appends and pops
    are atomic and `acked` is set last, so no lock is needed, and none is taken per event."""

    entries: deque[Sent] = field(default_factory=deque)
    acked_count: int = 0
    failed: str | None = None

    def add(self, entry: Sent) -> None:
        self.entries.append(entry)

    def ack(self, entry: Sent, error: str | None, when: float) -> None:
        entry.ack_time = when
        entry.error = error
        if error is None:
            self.acked_count += 1  # only the delivery thread writes it
            entry.acked = True
        elif self.failed is None:
            self.failed = error

    def __len__(self) -> int:
        return len(self.entries)

    def take_acked_prefix(self) -> list[Sent]:
        """Remove and return the longest prefix of acknowledged events (never past an unacknowledged one)."""
        out: list[Sent] = []
        entries = self.entries
        while entries and entries[0].acked:
            out.append(entries.popleft())
        return out


AckHook = Callable[[Sent], None]


class Publisher:
    """An idempotent, batching producer with a background thread serving delivery reports."""

    def __init__(self, settings: Settings, *, source: str = "", **overrides: Any) -> None:
        self.settings = settings

        def producer(linger_ms: int) -> Producer:
            return Producer(producer_config(
                settings,
                **{
                    "message.timeout.ms": 0,  # infinite: retry in order while the broker is away
                    "linger.ms": linger_ms,
                    "queue.buffering.max.messages": max(100000, settings.tailer_max_in_flight * 2),
                    "queue.buffering.max.kbytes": 1048576,
                    "reconnect.backoff.max.ms": 1000,
                    "error_cb": self._on_error,
                    **overrides,
                },
            ))

        self._fast = self._producer = producer(settings.tailer_linger_ms)
        self._bulk = (producer(settings.tailer_backlog_linger_ms)
                      if settings.tailer_backlog_linger_ms > settings.tailer_linger_ms else None)
        self._topics: set[str] = set()
        self._fatal: str | None = None
        self._stop = threading.Event()
        self._log = get_logger("cdc.publisher", source=source)
        # One thread per producer serves its delivery reports (a poll on one would delay the other's).
        self._pollers = [
            threading.Thread(target=self._poll_loop, args=(p,), name=f"kafka-poll-{source}", daemon=True)
            for p in self._producers()
        ]
        for poller in self._pollers:
            poller.start()

    def _producers(self) -> list[Producer]:
        return [self._fast] if self._bulk is None else [self._fast, self._bulk]

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err.str()
            self._log.error("fatal producer error", error=err.str())
        elif err.code() not in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
            self._log.warning("producer error", error=err.str())

    def _poll_loop(self, producer: Producer) -> None:
        while not self._stop.is_set():
            producer.poll(0.05)

    @property
    def bulk(self) -> bool:
        """True while events go through the long-linger producer."""
        return self._producer is self._bulk

    def use_bulk(self, bulk: bool, wait: float = 0.05) -> bool:
        """Send through the long-linger producer (a backlog drains) or the short one; True once in effect.

        The switch waits up to `wait` seconds for the producer in use to have nothing in flight (so that no
        event overtakes an earlier one of its aggregate); if it still has, nothing changes: try again later."""
        target = self._bulk if bulk and self._bulk is not None else self._fast
        if target is self._producer:
            return True
        if self._producer.flush(wait) > 0:
            return False
        self._producer = target
        return True

    @property
    def fatal(self) -> str | None:
        return self._fatal

    def ensure_topic(self, topic: str) -> None:
        """Create `topic` with the configured partitions if it does not exist (once per process)."""
        if topic in self._topics:
            return
        ensure_topics(self.settings, [topic], partitions=self.settings.kafka_partitions)
        self._topics.add(topic)

    def send(
        self,
        event: Event,
        entry: Sent,
        inflight: InFlight,
        on_ack: AckHook | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Hand `event` to the producer; blocks while its queue is full. False if told to stop meanwhile."""
        return self.produce(
            event.topic, event.to_json(), event.kafka_key(), event.kafka_headers(), entry, inflight,
            on_ack, should_stop,
        )

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        entry: Sent,
        inflight: InFlight,
        on_ack: AckHook | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Send one record tracked by `entry` in `inflight` (also used for dead letters)."""
        self.ensure_topic(topic)
        inflight.add(entry)

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            inflight.ack(entry, None if err is None else err.str(), time.time())
            if err is not None:
                get_logger("cdc.publisher", event_id=entry.event_id, topic=topic).error(
                    "delivery failed", error=err.str()
                )
            elif on_ack is not None:
                on_ack(entry)

        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=headers if isinstance(headers, list) else list(headers),
                    on_delivery=delivered,
                )
                return True
            except BufferError:
                if should_stop():
                    inflight.ack(entry, "not sent: stopping", time.time())
                    return False
                time.sleep(0.01)

    def flush(self, timeout: float) -> int:
        """Wait up to `timeout` for every acknowledgement; returns how many are still outstanding."""
        # Only the producer in use can have anything in flight: a switch waits for the other to drain.
        return int(self._producer.flush(timeout))

    def outstanding(self) -> int:
        return sum(len(p) for p in self._producers())

    def close(self, timeout: float = 10.0) -> None:
        """Flush what can be flushed within `timeout`, drop the rest (it is re-sent from the checkpoint)."""
        for producer in self._producers():
            with contextlib.suppress(Exception):
                producer.flush(timeout)
            with contextlib.suppress(Exception):
                producer.purge()
                producer.flush(0)
        self._stop.set()
        for poller in self._pollers:
            poller.join(timeout=2)
