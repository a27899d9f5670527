"""Helpers for the stream/sink integration tests: build events, produce them, run workers as processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from cdc.event import Event
from cdc.kafka import kafka_config, producer_config
from cdc.schemas import (
    InventoryDecremented,
    OrderCancelled,
    OrderCreated,
    OrderDelivered,
    OrderItem,
    OrderRefunded,
    OrderShipped,
    PageViewed,
    PaymentConfirmed,
    payload_json,
)
from cdc.settings import Settings
from sinks.order_view import OrderRow

REPO = Path(__file__).resolve().parent.parent

T0 = datetime(2026, 1, 1, tzinfo=UTC)


# -- events ---------------------------------------------------------------------------------------------


def order_lifecycle(
    topic: str, order_id: str, customer_id: str, products: Sequence[str], kinds: Sequence[str],
    start: datetime = T0, refund: str = "1.00",
) -> list[Event]:
    """OrderCreated (v1) then the given kinds (paid, shipped, delivered, refunded, cancelled), versions 2, 3 …"""
    items = [OrderItem(product_id=p, quantity=1 + i % 3, unit_price=Decimal("9.99")) for i, p in enumerate(products)]
    total = sum((i.unit_price * i.quantity for i in items), Decimal("0.00"))
    created = OrderCreated(order_id=order_id, customer_id=customer_id, items=items, total=total)
    payloads: list[Any] = [created]
    for kind in kinds:
        payloads.append({
            "paid": PaymentConfirmed(order_id=order_id, amount=total),
            "shipped": OrderShipped(order_id=order_id, carrier="DHL", tracking_number=f"TR-{order_id}"),
            "delivered": OrderDelivered(order_id=order_id),
            "refunded": OrderRefunded(order_id=order_id, amount=Decimal(refund)),
            "cancelled": OrderCancelled(order_id=order_id, reason="changed mind"),
        }[kind])
    return [
        Event.create(
            topic=topic, aggregate_type="Order", aggregate_id=order_id, type=type(p).__name__,
            payload=payload_json(p), version=v, occurred_at=start + timedelta(seconds=v),
        )
        for v, p in enumerate(payloads, start=1)
    ]


def page_view(topic: str, user_id: str, product_id: str | None, at: datetime) -> Event:
    """A PageViewed event."""
    p = PageViewed(user_id=user_id, url=f"/p/{product_id or 'home'}", product_id=product_id, timestamp=at)
    return Event.create(topic=topic, aggregate_type="User", aggregate_id=user_id, type="PageViewed",
                        payload=payload_json(p), occurred_at=at)


def stock_events(topic: str, product_id: str, start_stock: int, quantities: Sequence[int]) -> list[Event]:
    """InventoryDecremented v1, v2 … for one product."""
    out = []
    stock = start_stock
    for v, q in enumerate(quantities, start=1):
        stock -= q
        p = InventoryDecremented(product_id=product_id, quantity=q, stock_after=stock, order_id=f"o{v}")
        out.append(Event.create(topic=topic, aggregate_type="Product", aggregate_id=product_id,
                                type="InventoryDecremented", payload=payload_json(p), version=v))
    return out


# Records of every class that cannot be decoded, for a worker with `stream_max_record_bytes` = this.
POISON_MAX_BYTES = 16384


def poison_values(topic: str, aggregate: str = "bad") -> list[tuple[str, bytes, str]]:
    """(class, record value, words of the dead-letter reason) for each kind of record that cannot be decoded.

    Each event-shaped one has an aggregate and event id of its own (`<aggregate><i>`), so holds they imply
    touch no other aggregate."""
    good = order_lifecycle(topic, "o1", "c1", ["a"], [])[0].to_json_dict()
    counter = iter(range(1000))

    def envelope(**changes: Any) -> bytes:
        i = next(counter)
        data = {**good, "event_id": str(uuid.UUID(int=0x5D0F6A52 * 2**96 + i)), "aggregate_id": f"{aggregate}{i}",
                **changes}
        return json.dumps(data).encode()

    def raw_envelope(text: str) -> bytes:
        return envelope(payload={"x": 0}).decode().replace('{"x": 0}', text).encode()

    items = [{"product_id": "a", "quantity": -1, "unit_price": "1.00"}]
    return [
        ("too deep", b"[" * 5000 + b"]" * 5000, "too deeply nested"),
        ("too deep inside an event", raw_envelope("[" * 5000 + "]" * 5000), "too deeply nested"),
        ("deep but parseable", raw_envelope('{"x": ' + "[" * 900 + "]" * 900 + "}"), "invalid event"),
        ("an int of 5,000 digits", envelope(version=0).replace(b'"version": 0', b'"version": ' + b"9" * 5000),
         "Exceeds the limit (4300 digits)"),
        ("too large", envelope(payload={"order_id": "o1", "pad": "x" * 20000}), "record too large"),
        ("not UTF-8", envelope(payload={"order_id": "\u00e9"}).replace(b"\\u00e9", b"\xe9"), "malformed JSON"),
        ("a lone surrogate", envelope(payload={"order_id": "o1", "customer_id": "\ud800", "items": []}),
         "lone surrogate"),
        ("not an object: a list", b"[1, 2]", "must be a JSON object"),
        ("not an object: a string", b'"OrderCreated"', "must be a JSON object"),
        ("not an object: null", b"null", "must be a JSON object"),
        ("empty", b"", "malformed JSON"),
        ("truncated", envelope()[:40], "malformed JSON"),
        ("wrong type: version", envelope(version="two"), "version"),
        ("wrong type: payload", envelope(payload=[1, 2]), "payload"),
        ("out of range: version 0", envelope(version=0), "version"),
        ("out of range: quantity", envelope(payload={"order_id": "o1", "customer_id": "c1", "total": "1.00",
                                                     "items": items}), "quantity"),
        ("out of range: total over 12 digits", envelope(payload={"order_id": "o1", "customer_id": "c1",
                                                                 "total": "1" * 13, "items": []}), "payload"),
        ("NaN", raw_envelope('{"x": NaN}'), "finite number"),
        ("too long: a topic name", envelope(topic="t" * 300), "topic"),
        # ids a store could not index: the event's own limit refuses them before any store sees them
        ("too long: an aggregate id", envelope(aggregate_id="o" * 3000), "at most 200 characters"),
        ("too long: a product id", envelope(payload={"order_id": "o1", "customer_id": "c1", "total": "1.00",
                                                     "items": [{**items[0], "product_id": "p" * 5000,
                                                                "quantity": 1}]}), "at most 200 characters"),
        ("not a UUID", envelope(event_id="oops"), "event_id"),
        ("unknown type", envelope(type="OrderTeleported"), "unknown event type"),
        ("not handled here", envelope(type="PageViewed"), "invalid PageViewed payload"),
    ]


# -- Kafka ----------------------------------------------------------------------------------------------


def produce(settings: Settings, topic: str, events: Iterable[Event]) -> int:
    """Produce events as the tailer does (value JSON, key aggregate id, headers); wait for every ack."""
    records = [(e.kafka_key(), e.to_json(), e.kafka_headers()) for e in events]
    return produce_raw(settings, topic, records)


def produce_raw(
    settings: Settings, topic: str, records: Iterable[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]
) -> int:
    """Produce raw (key, value, headers) records; wait for every ack (retrying transient errors)."""
    errors: list[str] = []
    producer = Producer(producer_config(settings))
    n = 0
    for key, value, headers in records:
        producer.produce(topic, key=key, value=value, headers=headers,  # type: ignore[arg-type]
                         on_delivery=lambda err, msg: errors.append(str(err)) if err else None)
        producer.poll(0)
        n += 1
    left = producer.flush(60)
    assert left == 0 and not errors, f"produce failed: {left} left, {errors[:3]}"
    return n


def committed_offsets(settings: Settings, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets on `topic` (-1001 when none)."""
    consumer = Consumer(kafka_config(settings, **{"group.id": group, "enable.auto.commit": False}))
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        consumer.close()


def end_offsets(settings: Settings, topic: str, partitions: int) -> dict[int, int]:
    """High watermarks of `topic`."""
    consumer = Consumer(kafka_config(settings, **{"group.id": "probe"}))
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
    finally:
        consumer.close()


# -- worker processes -----------------------------------------------------------------------------------


class WorkerProcess:
    """`cdcflow worker --read-model …` as a child process, logging to a file."""

    def __init__(
        self, read_model: str, topic: str, group: str, namespace: str, log_dir: Path,
        env: dict[str, str] | None = None, name: str | None = None,
    ) -> None:
        self.read_model = read_model
        self.log_path = log_dir / f"{name or read_model}.log"
        argv = [sys.executable, "-m", "cli", "worker", "--read-model", read_model,
                "--topic", topic, "--group-id", group, "--namespace", namespace]
        # CDCFLOW_ROLE=admin: the worker writes into namespaces the test (admin) made, as the test does.
        full_env = {**os.environ, "CDCFLOW_ROLE": "admin", "CDCFLOW_LOG_LEVEL": "INFO", "CDCFLOW_LOG_JSON": "true",
                    "CDCFLOW_STREAM_BATCH_WITHIN": "0.2", "CDCFLOW_SINK_RETRY_MAX": "1.0",
                    "CDCFLOW_WORKER_SESSION_TIMEOUT": "8", **(env or {})}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self.proc = subprocess.Popen(argv, cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def log_text(self) -> str:
        """Everything the worker logged so far."""
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """kill -9."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, then SIGKILL after `timeout`."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def wait_quiet(fn: Any, settle: float = 1.5, timeout: float = 60.0) -> Any:
    """Poll fn() until its value stays the same for `settle` seconds; return it."""
    deadline = time.monotonic() + timeout
    last = fn()
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = fn()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle:
            return last
    raise AssertionError(f"value did not settle within {timeout}s")


def caught_up(settings: Settings, group: str, topic: str, partitions: int) -> bool:
    """True when `group` has committed every record of `topic`."""
    ends = end_offsets(settings, topic, partitions)
    done = committed_offsets(settings, group, topic, partitions)
    return all(done.get(p, -1) >= end for p, end in ends.items() if end > 0)


def expected_graph(rows: dict[str, OrderRow]) -> list[dict[str, Any]]:
    """The purchase graph snapshot that the folded order rows imply."""
    out = []
    for row in rows.values():
        for product_id, quantity, unit_price in row.items:
            refunded = "0" if row.refunded_amount == 0 else f"{row.refunded_amount:.2f}"
            out.append({
                "customer_id": row.customer_id, "product_id": product_id, "order_id": row.order_id,
                "quantity": quantity, "unit_price": str(unit_price), "order_total": str(row.total),
                "status": row.status, "active": row.status not in ("cancelled", "refunded"),
                "refunded_amount": refunded, "version": row.version,
                "purchased_at": row.created_at.isoformat() if row.created_at else None,
            })
    return sorted(out, key=lambda r: (r["order_id"], r["product_id"]))
