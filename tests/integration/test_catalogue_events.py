"""Every state change goes through the outbox, on the real servers: catalogue writes emit their events in the
same transaction, a re-seed that changes nothing writes nothing, a mixed workload leaves no state without its
event, and the stock view (services + tailer + a stock_view worker) equals the products collection."""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from fastapi import FastAPI
from pymongo import MongoClient

from cdc.acks import Sent
from cdc.checkpoint import CheckpointStore
from cdc.connect import postgres_connect
from cdc.kafka import ensure_topics
from cdc.mongo import mongo_client
from cdc.outbox import OUTBOX_COLLECTION, backlog
from cdc.outbox_writer import OutboxWriter
from cdc.publisher import Publisher
from cdc.schemas import TOPIC_INVENTORY
from cdc.services import SERVICE_DATABASES, service_database
from cdc.settings import Settings
from cdc.tailer import Tailer
from producers import clickstream, order, product
from producers.load import Mix, Targets, run_load
from producers.product import (
    DuplicateProductError,
    InsufficientStockError,
    ProductIn,
    demo_catalogue,
    purchase,
    seed_catalogue,
)
from sinks.registry import build_sink
from sinks.stock_view import StockViewSink
from streams.resnapshot import resnapshot
from tests.helpers import free_port, unique, wait_for
from tests.outbox_audit import order_discrepancies, page_view_discrepancies, product_discrepancies
from tests.streams_support import WorkerProcess, caught_up

pytestmark = pytest.mark.integration

Document = dict[str, Any]
FACTORIES: dict[str, Callable[..., FastAPI]] = {
    "product": product.create_app,
    "order": order.create_app,
    "clickstream": clickstream.create_app,
}


@pytest.fixture
def svc_settings(settings: Settings, mongo: object) -> Iterator[Settings]:
    """Settings whose service databases are this test's own (a unique prefix); dropped afterwards."""
    s = settings.model_copy(update={"service_db_prefix": unique("cat") + "_", "order_snapshot_interval": 3})
    yield s
    client: MongoClient[Document] = mongo_client(s)
    try:
        for name in SERVICE_DATABASES:
            client.drop_database(service_database(s, name))
    finally:
        client.close()


@contextlib.contextmanager
def serving(s: Settings, names: tuple[str, ...] = tuple(FACTORIES)) -> Iterator[Targets]:
    """The services as real HTTP servers (uvicorn, in threads) on free ports."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []
    urls = {name: "http://127.0.0.1:1" for name in FACTORIES}
    try:
        for name in names:
            port = free_port()
            config = uvicorn.Config(FACTORIES[name](s), host="127.0.0.1", port=port, log_config=None,
                                    access_log=False, lifespan="on")
            server = uvicorn.Server(config)
            thread = threading.Thread(target=server.run, daemon=True)
            thread.start()
            servers.append((server, thread))
            urls[name] = f"http://127.0.0.1:{port}"
        for server, _ in servers:
            wait_for(lambda server=server: server.started, timeout=30, what="uvicorn start")  # type: ignore[misc]
        yield Targets(product=urls["product"], order=urls["order"], clickstream=urls["clickstream"])
    finally:
        for server, thread in servers:
            server.should_exit = True
            thread.join(timeout=10)


def outbox_types(db: Any, product_id: str) -> list[tuple[int, str]]:
    return [(d["version"], d["type"]) for d in db[OUTBOX_COLLECTION].find({"aggregate_id": product_id})
            .sort("version", 1)]


# -- the catalogue writes, at the writer ------------------------------------------------------------------


def test_catalogue_writes_emit_their_events_and_a_reseed_that_changes_nothing_writes_nothing(
    svc_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = mongo_client(svc_settings)
    try:
        writer = OutboxWriter(client, service_database(svc_settings, "product"))
        db, products, outbox = writer.database, writer.database["products"], writer.outbox
        # Products stored before the catalogue had events: version 0, nothing in the outbox.
        products.insert_one({"_id": "p-0003", "name": "Old", "price": "1.00", "stock": 4})  # not even a version
        products.insert_one({"_id": "legacy", "name": "Old", "price": "1.00", "stock": 4, "version": 0})
        # Its first purchase writes its ProductCreated (as it was) before its InventoryDecremented.
        assert purchase(writer, "legacy", 1).version == 2
        assert outbox_types(db, "legacy") == [(1, "ProductCreated"), (2, "InventoryDecremented")]
        legacy_created = outbox.find_one({"aggregate_id": "legacy", "version": 1})
        assert legacy_created is not None and legacy_created["payload"]["stock"] == 4

        first = seed_catalogue(writer, demo_catalogue(5, stock=10))
        assert first.to_json() == {"written": 5, "created": 5, "updated": 0, "stock_adjusted": 0, "unchanged": 0,
                                   "events": 5}
        assert {d["_id"]: d["version"] for d in products.find({"_id": {"$ne": "legacy"}})} == {
            f"p-000{i}": 1 for i in range(1, 6)
        }
        assert outbox_types(db, "p-0003") == [(1, "ProductCreated")]
        created = outbox.find_one({"aggregate_id": "p-0001"})
        assert created is not None and created["topic"] == TOPIC_INVENTORY
        assert created["aggregate_type"] == "Product" and created["payload"]["stock"] == 10

        # The same seed again: nothing to write, no version moves, no event.
        before = outbox.count_documents({})
        again = seed_catalogue(writer, demo_catalogue(5, stock=10))
        assert again.to_json()["unchanged"] == 5 and again.events == 0
        assert outbox.count_documents({}) == before
        assert {d["version"] for d in products.find({"_id": {"$ne": "legacy"}})} == {1}

        # A purchase, then the demo's re-seed puts stock back: one StockAdjusted, with the signed change.
        bought = purchase(writer, "p-0002", 3, order_id="o-1")
        assert (bought.stock, bought.version) == (7, 2)
        restock = seed_catalogue(writer, demo_catalogue(5, stock=10))
        assert restock.to_json()["stock_adjusted"] == 1 and restock.events == 1
        assert outbox_types(db, "p-0002") == [(1, "ProductCreated"), (2, "InventoryDecremented"),
                                              (3, "StockAdjusted")]
        adjusted = outbox.find_one({"aggregate_id": "p-0002", "version": 3})
        assert adjusted is not None and adjusted["payload"] == {"product_id": "p-0002", "change": 3,
                                                                "stock_after": 10}

        # Name and stock in one seed: two events, two versions, one transaction.
        changed = ProductIn(id="p-0004", name="Desk lamp", price=demo_catalogue(5)[3].price, stock=2)
        assert seed_catalogue(writer, [changed]).events == 2
        assert outbox_types(db, "p-0004") == [(1, "ProductCreated"), (2, "ProductUpdated"), (3, "StockAdjusted")]
        assert products.find_one({"_id": "p-0004"}) == {"_id": "p-0004", "name": "Desk lamp",
                                                        "price": str(changed.price), "stock": 2, "version": 3}

        # Atomic: a failure between the product write and the outbox insert leaves neither.
        state = list(products.find().sort("_id", 1))
        count = outbox.count_documents({})

        def fail(*_: object) -> None:
            raise RuntimeError("injected between the two writes")

        broken = OutboxWriter(client, db.name)
        monkeypatch.setattr(broken, "_insert", fail)
        with pytest.raises(RuntimeError, match="injected"):
            seed_catalogue(broken, [ProductIn(id="p-0001", name="X", price="1.00", stock=1),  # type: ignore[arg-type]
                                    ProductIn(id="p-new", name="New", price="1.00", stock=1)])  # type: ignore[arg-type]
        assert list(products.find().sort("_id", 1)) == state and outbox.count_documents({}) == count

        # The same product twice in one seed is refused before anything is written.
        with pytest.raises(DuplicateProductError, match="p-0001"):
            seed_catalogue(writer, [demo_catalogue(1)[0], demo_catalogue(1, stock=3)[0]])
        assert outbox.count_documents({}) == count
        assert product_discrepancies(db) == []
    finally:
        client.close()


def test_seeds_racing_purchases_keep_every_version_with_its_event(svc_settings: Settings) -> None:
    """Re-seeds and purchases of the same products at once: each write waits for or retries after the other,
    and every version the products reach has exactly one event."""
    client = mongo_client(svc_settings)
    try:
        writer = OutboxWriter(client, service_database(svc_settings, "product"))
        seed_catalogue(writer, demo_catalogue(3, stock=100))
        errors: list[BaseException] = []
        stop = threading.Event()

        def buyer(seed: int) -> None:
            rng = random.Random(seed)
            try:
                while not stop.is_set():
                    with contextlib.suppress(InsufficientStockError):  # refused, nothing written: fine here
                        purchase(writer, f"p-000{rng.randint(1, 3)}", rng.randint(1, 5))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=buyer, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        try:
            for round_ in range(8):
                seed_catalogue(writer, demo_catalogue(3, stock=100 + round_ % 2))
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert errors == []
        assert product_discrepancies(writer.database) == []
        assert writer.outbox.count_documents({"type": "StockAdjusted"}) >= 3
    finally:
        client.close()


# -- a mixed workload leaves no state without its event ----------------------------------------------------


def test_a_mixed_workload_changes_no_state_without_its_outbox_event(svc_settings: Settings) -> None:
    s = svc_settings
    mix = Mix(buy=0.7, cancel=0.15, refund=0.4, step_delay=0.05, products=6)
    with serving(s) as targets, httpx.Client(timeout=30) as http:
        stop = threading.Event()
        seeds: list[int] = []

        def reseed() -> None:
            rng = random.Random(11)
            while not stop.is_set():
                stock = rng.choice((1_000_000, 999_990))
                r = http.post(f"{targets.product}/products/seed", params={"count": 6, "stock": stock})
                seeds.append(r.status_code)
                body = [{"id": f"extra-{i}", "name": f"Extra {rng.randint(1, 2)}", "price": "3.50",
                         "stock": rng.randint(0, 3)} for i in range(3)]
                seeds.append(http.post(f"{targets.product}/products", json=body).status_code)
                for pid in ("extra-0", "extra-1", "nope"):  # some run out, one does not exist: refused, no event
                    http.post(f"{targets.product}/products/{pid}/purchase", params={"quantity": 2})
                stop.wait(0.2)

        side = threading.Thread(target=reseed)
        side.start()
        try:
            report = run_load(targets, rate=30, duration=5, seed=3, workers=12, mix=mix)
        finally:
            stop.set()
            side.join(30)
        assert report.requests["purchase"] > 0 and report.requests["create"] > 0, report.render()
        assert report.requests["pageview"] > 0 and seeds and set(seeds) == {200}, (report.render(), seeds)

        client = mongo_client(s)
        try:
            dbs = {name: client[service_database(s, name)] for name in SERVICE_DATABASES}

            def audit() -> None:
                assert product_discrepancies(dbs["product"]) == []
                assert order_discrepancies(dbs["order"]) == []
                assert page_view_discrepancies(dbs["clickstream"]) == []

            audit()
            assert dbs["product"]["products"].count_documents({}) == 9
            assert dbs["product"][OUTBOX_COLLECTION].count_documents({"type": "StockAdjusted"}) > 0
            assert dbs["order"]["order_events"].count_documents({}) > 0
            assert dbs["clickstream"]["page_views"].count_documents({}) > 0
            # Refused writes change nothing: a product twice in one seed, an over-long id, an over-long reason.
            twice = [{"id": "d", "name": "D", "price": "1", "stock": 1}] * 2
            assert http.post(f"{targets.product}/products", json=twice).status_code == 422
            assert http.post(f"{targets.order}/orders", json={"customer_id": "c" * 201, "items": [
                {"product_id": "p-0001", "quantity": 1, "unit_price": "1.00"}]}).status_code == 422
            some_order = dbs["order"]["order_events"].find_one({"type": "OrderCreated"})
            assert some_order is not None
            assert http.post(f"{targets.order}/orders/{some_order['order_id']}/cancel",
                             json={"reason": "r" * 5000}).status_code == 422
            assert dbs["product"]["products"].find_one({"_id": "d"}) is None
            audit()
        finally:
            client.close()


# -- end to end: services + tailer + stock_view worker -----------------------------------------------------


@pytest.fixture
def own_inventory_topic(settings: Settings, kafka: object, monkeypatch: pytest.MonkeyPatch) -> str:
    """A topic of this test's own that the in-process tailer sends `inventory` events to.

    The tailer sends each event to its own topic, and the product service's is `inventory`, which the live
    stock_view read model consumes: this test's products (p-0001 … like the demo's) must not reach it. Only the
    topic name changes on the way to the producer; records are otherwise what the tailer sends."""
    topic = unique("catsv_inventory")
    ensure_topics(settings, [topic], partitions=settings.kafka_partitions)
    real = Publisher.send

    def send(self: Publisher, entry: Sent, *args: Any, **kwargs: Any) -> bool:
        if entry.topic == TOPIC_INVENTORY:
            entry.topic = topic
        return real(self, entry, *args, **kwargs)

    monkeypatch.setattr(Publisher, "send", send)
    return topic


def test_stock_view_equals_the_products_after_seeds_purchases_and_reseeds(
    svc_settings: Settings, own_inventory_topic: str, postgres: object, tmp_path: Path
) -> None:
    s, topic = svc_settings, own_inventory_topic
    partitions = s.kafka_partitions
    ns, group = unique("catsv"), unique("catsv.stock_view")
    client = mongo_client(s)
    product_db = client[service_database(s, "product")]
    sink = build_sink("stock_view", s, ns)
    assert isinstance(sink, StockViewSink)
    # Stored before the catalogue had events (version 0): its seed creates it.
    product_db["products"].insert_one({"_id": "p-0007", "name": "Old", "price": "1.00", "stock": 1, "version": 0})
    tailer = Tailer(s, [product_db.name], client=client).start()
    worker = WorkerProcess("stock_view", topic, group, ns, tmp_path)

    def products() -> dict[str, tuple[int, int]]:
        return {d["_id"]: (d["stock"], d["version"]) for d in product_db["products"].find()}

    def view() -> dict[str, tuple[int, int]]:
        return {r.product_id: (r.stock, r.version) for r in sink.rows()}

    def settled() -> bool:
        watermark = CheckpointStore(client[s.tailer_state_database]["checkpoints"]).load(
            f"{product_db.name}.{OUTBOX_COLLECTION}").watermark
        return (backlog(product_db[OUTBOX_COLLECTION], watermark)[0] == 0
                and caught_up(s, group, topic, partitions) and view() == products())

    try:
        with serving(s, ("product",)) as targets, httpx.Client(timeout=30) as http:
            seed_url = f"{targets.product}/products/seed"

            def buy(rng: random.Random, n: int) -> None:
                for _ in range(n):
                    http.post(f"{targets.product}/products/p-{rng.randint(1, 12):04d}/purchase",
                              params={"quantity": rng.randint(1, 4), "customer_id": "c-1"})

            assert http.post(seed_url, params={"count": 10, "stock": 20}).json()["created"] == 10
            buy(random.Random(1), 40)  # some products run out: 409, nothing written
            assert http.post(seed_url, params={"count": 10, "stock": 20}).json()["stock_adjusted"] > 0
            assert http.post(seed_url, params={"count": 10, "stock": 20}).json()["events"] == 0
            buyers = [threading.Thread(target=buy, args=(random.Random(i), 25)) for i in range(3)]
            for t in buyers:
                t.start()
            for stock in (30, 25, 30):  # re-seeds while purchases go on
                assert http.post(seed_url, params={"count": 12, "stock": stock}).status_code == 200
            for t in buyers:
                t.join(60)
            body = [{"id": "p-0001", "name": "Renamed", "price": "1.00", "stock": 3},
                    {"id": "p-0002", "name": demo_catalogue(2)[1].name, "price": "99.99", "stock": 0}]
            assert http.post(f"{targets.product}/products", json=body).json()["updated"] == 2

        wait_for(settled, timeout=120, interval=0.5, what="the stock view to equal the products collection")
        assert len(products()) == 12 and all(v >= 1 for _, v in products().values())
        assert product_discrepancies(product_db) == []

        # A row that drifted at the same version (as the seeds without events left them): a resnapshot repairs it.
        with postgres_connect(s, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("UPDATE {}.stock_view SET stock = stock + 1000 WHERE product_id = %s")
                         .format(psycopg.sql.Identifier(ns)), ("p-0003",))
        assert view() != products()
        report = resnapshot(s, "product", topic=topic)
        assert report.events == 12 and report.unversioned == 0
        wait_for(settled, timeout=120, interval=0.5, what="the resnapshot to repair the drifted row")
    finally:
        worker.stop()
        assert tailer.stop(30)
        sink.drop()
        sink.close()
        client.close()
