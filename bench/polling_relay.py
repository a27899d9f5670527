"""The baseline: a polling outbox relay the way teams commonly hand-roll it (for the benchmark only).

Every 100 ms: find unpublished outbox documents (oldest first), then for each one send it to Kafka and flush
(wait for the acknowledgement), then mark it published. No change streams, no pipelining.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from confluent_kafka import Producer
from pymongo.collection import Collection

from cdc.event import Event, utcnow
from cdc.kafka import producer_config
from cdc.outbox import CREATION_ORDER, Document
from cdc.settings import Settings

AckHook = Callable[[str, float], None]


class PollingRelay:
    """poll every `interval` seconds -> send + flush per event -> mark published."""

    def __init__(self, settings: Settings, outbox: Collection[Document], *, interval: float = 0.1,
                 batch: int = 100, on_ack: AckHook | None = None) -> None:
        self.outbox = outbox
        self.interval = interval
        self.batch = batch
        self.on_ack = on_ack
        self.producer = Producer(producer_config(settings, **{"linger.ms": 0}))
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, name="polling-relay", daemon=True)
        self.sent = 0

    def start(self) -> PollingRelay:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(30)

    def run(self) -> None:
        while not self.stop_event.is_set():
            docs = list(self.outbox.find({"published": False}).sort(CREATION_ORDER).limit(self.batch))
            for doc in docs:
                event = Event.parse(doc)
                headers: list[tuple[str, str | bytes | None]] = list(event.kafka_headers())
                self.producer.produce(event.topic, value=event.to_json(), key=event.kafka_key(), headers=headers)
                self.producer.flush(30)
                acked = time.time()
                self.outbox.update_one({"_id": doc["_id"]}, {"$set": {"published": True, "published_at": utcnow()}})
                self.sent += 1
                if self.on_ack is not None:
                    self.on_ack(event.event_id, acked)
            if len(docs) < self.batch:
                self.stop_event.wait(self.interval)
