"""`cdcflow resnapshot` on the real servers: the event store / outbox re-emitted with the same ids, keys, headers
and per-aggregate order; applying the re-emitted events (twice) leaves the read model unchanged."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from cdc.kafka import ensure_topics, kafka_config
from cdc.mongo import Document, mongo_client
from cdc.outbox_writer import OutboxWriter
from cdc.schemas import OrderItem
from cdc.services import service_database
from cdc.settings import Settings
from producers.clickstream import PageViewIn, record_page_views
from producers.order import OrderStore
from producers.order_state import CancelOrder, Command, ConfirmPayment, CreateOrder, DeliverOrder, ShipOrder
from producers.product import ProductIn, demo_catalogue, purchase, seed_catalogue
from sinks.order_view import OrderViewSink
from sinks.registry import build_sink
from sinks.stock_view import StockViewSink
from streams.replay import replay
from streams.resnapshot import resnapshot
from tests.helpers import unique

pytestmark = pytest.mark.integration

PARTITIONS = 4

Record = dict[str, Any]


@pytest.fixture
def svc_settings(settings: Settings, mongo: object, kafka: object) -> Iterator[Settings]:
    """Settings whose service databases are this test's own (a unique prefix); dropped afterwards."""
    s = settings.model_copy(update={"service_db_prefix": f"{unique('rs')}_"})
    yield s
    client = mongo_client(s)
    try:
        for name in ("order", "product", "clickstream"):
            client.drop_database(service_database(s, name))
    finally:
        client.close()


def headers_of(raw: Any) -> dict[str, str]:
    return {str(k): (v or b"").decode() for k, v in raw or []}


def read_topic(settings: Settings, topic: str) -> list[Record]:
    """Every record of `topic` up to its current end, in (partition, offset) order."""
    consumer = Consumer(kafka_config(settings, **{"group.id": unique("probe"), "enable.auto.commit": False}))
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS)}
        todo = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, 0) for p in sorted(todo)])
        out: list[Record] = []
        deadline = datetime.now(UTC) + timedelta(seconds=60)
        while todo:
            assert datetime.now(UTC) < deadline, f"could not read {topic}: {sorted(todo)} left"
            for m in consumer.consume(500, timeout=0.5):
                assert m.error() is None, m.error()
                p, o = m.partition() or 0, m.offset() or 0
                value = json.loads(m.value() or b"{}")
                out.append({"partition": p, "offset": o, "key": (m.key() or b"").decode(), "value": value,
                            "headers": headers_of(m.headers())})
                if o + 1 >= ends[p]:
                    todo.discard(p)
        return sorted(out, key=lambda r: (r["partition"], r["offset"]))
    finally:
        consumer.close()


def assert_tailer_shaped(records: list[Record]) -> None:
    """Key = aggregate id, headers repeat event id/type/version, one aggregate on one partition."""
    partitions: dict[str, set[int]] = defaultdict(set)
    for r in records:
        v = r["value"]
        assert r["key"] == v["aggregate_id"]
        assert r["headers"]["event_id"] == v["event_id"]
        assert r["headers"]["type"] == v["type"]
        if v["version"] is not None:
            assert r["headers"]["version"] == str(v["version"])
        partitions[v["aggregate_id"]].add(r["partition"])
    assert all(len(ps) == 1 for ps in partitions.values()), partitions


def test_resnapshot_order_re_emits_the_event_store_in_order_and_downstream_is_unchanged(
    svc_settings: Settings, postgres: object
) -> None:
    s = svc_settings
    client = mongo_client(s)
    ns = unique("rso")
    topic = f"{ns}_orders"
    ensure_topics(s, [topic], partitions=PARTITIONS)
    sink = build_sink("order_view", s, ns)
    try:
        store = OrderStore(OutboxWriter(client, service_database(s, "order")))
        store.ensure_indexes()
        items = [OrderItem(product_id="p1", quantity=2, unit_price=Decimal("5.00")),
                 OrderItem(product_id="p2", quantity=1, unit_price=Decimal("7.50"))]
        lifecycles: dict[str, list[Command]] = {
            "o-1": [ConfirmPayment(), ShipOrder(), DeliverOrder()],
            "o-2": [CancelOrder(reason="changed mind")],
            "o-3": [ConfirmPayment()],
            "o-4": [],
        }
        for order_id, commands in lifecycles.items():
            store.execute(order_id, CreateOrder(customer_id=f"c-{order_id}", items=items))
            for command in commands:
                store.execute(order_id, command)
        stored: list[Document] = list(store.events.find({}, projection={"order_id": 1, "version": 1}))
        stored_ids = {d["_id"] for d in stored}
        traces = {d["_id"]: d["headers"]["trace_id"] for d in store.writer.outbox.find({}, projection={"headers": 1})}
        assert len(stored) == sum(1 + len(c) for c in lifecycles.values())

        report = resnapshot(s, "order", topic=topic)
        assert report.events == len(stored) and report.topics == {topic: len(stored)}
        records = read_topic(s, topic)
        assert {r["value"]["event_id"] for r in records} == stored_ids
        assert len(records) == len(stored)
        assert_tailer_shaped(records)
        for r in records:  # headers as the tailer sends them: the outbox document's trace id
            assert r["headers"]["trace_id"] == traces[r["value"]["event_id"]]
            assert r["value"]["topic"] == topic
        by_order: dict[str, list[int]] = defaultdict(list)
        for r in records:
            by_order[r["key"]].append(r["value"]["version"])
        assert by_order == {o: list(range(1, 2 + len(c))) for o, c in lifecycles.items()}

        # downstream: applying the re-emitted events, then applying them again, gives the same order view
        replay(s, "order_view", None, topic=topic, namespace=ns)
        assert isinstance(sink, OrderViewSink)
        once = sink.snapshot()
        expected = {o: store.load(o) for o in lifecycles}
        assert {r["order_id"]: (r["status"], r["version"]) for r in once} == {
            o: (st.status.value.lower(), st.version) for o, st in expected.items()
        }
        again = resnapshot(s, "order", topic=topic)
        assert again.events == len(stored)
        assert len(read_topic(s, topic)) == 2 * len(stored)
        replay(s, "order_view", None, topic=topic, namespace=ns)
        assert sink.snapshot() == once
    finally:
        sink.drop()
        sink.close()
        client.close()


def test_resnapshot_clickstream_re_emits_every_outbox_document(svc_settings: Settings) -> None:
    s = svc_settings
    client = mongo_client(s)
    topic = f"{unique('rsc')}_clickstream"
    ensure_topics(s, [topic], partitions=PARTITIONS)
    try:
        writer = OutboxWriter(client, service_database(s, "clickstream"))
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
        views = [PageViewIn(user_id=f"u{i % 3}", url=f"/p/{i}", product_id=f"p{i % 4}",
                            timestamp=start + timedelta(minutes=i)) for i in range(9)]
        ids = record_page_views(writer, views[:5]) + record_page_views(writer, views[5:])

        report = resnapshot(s, "clickstream", topic=topic)
        assert report.events == len(ids)
        records = read_topic(s, topic)
        assert sorted(r["value"]["event_id"] for r in records) == sorted(ids)
        assert_tailer_shaped(records)
        # per user (aggregate), creation order: unversioned events of one transaction share their occurred_at
        # (milliseconds), so the guarantee is a non-decreasing occurred_at, as in the tailer's catch-up scan
        per_user: dict[str, list[str]] = defaultdict(list)
        for r in records:
            per_user[r["key"]].append(r["value"]["occurred_at"])
        assert all(seq == sorted(seq) for seq in per_user.values()), per_user
        assert len(per_user) == 3
    finally:
        client.close()


def test_resnapshot_product_emits_each_products_state_and_the_stock_view_equals_the_products(
    svc_settings: Settings, postgres: object
) -> None:
    """The products collection (not the expiring outbox) is re-emitted: one ProductSnapshot per product at its
    version, with ids that a second resnapshot repeats; a stock view rebuilt from them equals the products, and
    applying them again changes nothing."""
    s = svc_settings
    client = mongo_client(s)
    ns = unique("rsp")
    topic = f"{ns}_inventory"
    ensure_topics(s, [topic], partitions=PARTITIONS)
    sink = build_sink("stock_view", s, ns)
    try:
        writer = OutboxWriter(client, service_database(s, "product"))
        seed_catalogue(writer, demo_catalogue(6, stock=20))
        for i, quantity in enumerate([3, 1, 4, 1, 5]):
            purchase(writer, f"p-000{1 + i % 3}", quantity)
        seed_catalogue(writer, [ProductIn(id="p-0004", name="Renamed", price=Decimal("2.00"), stock=9)])
        # Stored before the catalogue had events: no version to give, so it is reported, not sent.
        writer.database["products"].insert_one({"_id": "p-old", "name": "Old", "price": "1.00", "stock": 1,
                                                "version": 0})
        writer.outbox.delete_many({})  # published long ago and expired: the products collection still has it all

        report = resnapshot(s, "product", topic=topic)
        assert (report.events, report.unversioned, report.skipped, report.source) == (6, 1, 0, "products")
        records = read_topic(s, topic)
        assert_tailer_shaped(records)
        products = {d["_id"]: d for d in writer.database["products"].find({"version": {"$gte": 1}})}
        assert {r["key"]: (r["value"]["type"], r["value"]["version"], r["value"]["payload"]["stock"])
                for r in records} == {p: ("ProductSnapshot", d["version"], d["stock"]) for p, d in products.items()}
        assert {r["headers"]["source_service"] for r in records} == {"product-service"}

        replay(s, "stock_view", None, topic=topic, namespace=ns)
        assert isinstance(sink, StockViewSink)
        once = sink.snapshot()
        assert {r["product_id"]: (r["stock"], r["version"]) for r in once} == {
            p: (d["stock"], d["version"]) for p, d in products.items()
        }
        again = resnapshot(s, "product", topic=topic)
        assert again.events == 6
        both = read_topic(s, topic)
        assert len(both) == 12  # the same state, the same event ids
        assert sorted(r["value"]["event_id"] for r in both) == sorted([r["value"]["event_id"] for r in records] * 2)
        replay(s, "stock_view", None, topic=topic, namespace=ns)
        assert sink.snapshot() == once
    finally:
        sink.drop()
        sink.close()
        client.close()
