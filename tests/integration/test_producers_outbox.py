"""Atomic outbox on the real server: the business write and its event commit together or not at all."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.client_session import ClientSession

from cdc.errors import EventTooLargeError
from cdc.event import Event
from cdc.mongo import mongo_client
from cdc.outbox_writer import OutboxWriter
from cdc.settings import Settings
from infra.servers.base import Server
from producers.product import (
    PRODUCTS,
    InsufficientStockError,
    ProductIn,
    UnknownProductError,
    purchase,
    seed_catalogue,
)
from tests.helpers import unique

pytestmark = pytest.mark.integration

Document = dict[str, Any]


@pytest.fixture(scope="module")
def client(settings: Settings, mongo: Server) -> Iterator[MongoClient[Document]]:
    c = mongo_client(settings)
    yield c
    c.close()


@pytest.fixture
def writer(client: MongoClient[Document], settings: Settings) -> Iterator[OutboxWriter]:
    db = unique("prodtest_product_service")
    w = OutboxWriter(client, db, max_event_bytes=settings.max_event_bytes)
    w.ensure_indexes()
    seed_catalogue(w, [ProductIn(id="p-1", name="Lamp", price=Decimal("19.90"), stock=5)])  # ProductCreated v1
    yield w
    client.drop_database(db)


def stock(writer: OutboxWriter) -> tuple[int, int]:
    doc = writer.database[PRODUCTS].find_one({"_id": "p-1"})
    assert doc is not None
    return doc["stock"], doc["version"]


def test_purchase_writes_stock_and_event_together(writer: OutboxWriter) -> None:
    result = purchase(writer, "p-1", 2, order_id="o-1", customer_id="c-1")
    assert stock(writer) == (3, 2)
    docs = list(writer.outbox.find({"version": 2}))
    assert len(docs) == 1 and writer.outbox.count_documents({}) == 2
    event = Event.parse(docs[0])
    assert (event.event_id, event.type, event.topic) == (result.event_id, "InventoryDecremented", "inventory")
    assert (event.aggregate_type, event.aggregate_id, event.version) == ("Product", "p-1", 2)
    assert event.payload == {
        "product_id": "p-1",
        "quantity": 2,
        "stock_after": 3,
        "order_id": "o-1",
        "customer_id": "c-1",
    }
    assert event.headers["source_service"] == "product-service"
    assert "published" not in docs[0] and "published_at" not in docs[0]  # the tailer keeps no marks here


def test_insufficient_stock_writes_nothing(writer: OutboxWriter) -> None:
    with pytest.raises(InsufficientStockError):
        purchase(writer, "p-1", 6)
    with pytest.raises(UnknownProductError):
        purchase(writer, "p-404", 1)
    assert stock(writer) == (5, 1)
    assert writer.outbox.count_documents({}) == 1  # the product's ProductCreated only


def test_failure_between_the_two_writes_leaves_neither(
    writer: OutboxWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(session: ClientSession, events: list[Event]) -> None:
        # The stock decrement has been executed in this transaction when the outbox insert fails.
        doc = writer.database[PRODUCTS].find_one({"_id": "p-1"}, session=session)
        assert doc is not None and doc["stock"] == 4
        raise RuntimeError("injected failure before the outbox insert")

    monkeypatch.setattr(writer, "_insert", crash)
    with pytest.raises(RuntimeError, match="injected"):
        purchase(writer, "p-1", 1)
    assert stock(writer) == (5, 1)
    assert writer.outbox.count_documents({}) == 1  # the product's ProductCreated only


def test_failure_after_both_writes_before_commit_leaves_neither(
    writer: OutboxWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_insert = writer._insert

    def insert_then_crash(session: ClientSession, events: list[Event]) -> None:
        real_insert(session, events)
        assert writer.outbox.count_documents({}, session=session) == 2
        raise RuntimeError("injected failure before commit")

    monkeypatch.setattr(writer, "_insert", insert_then_crash)
    with pytest.raises(RuntimeError, match="injected"):
        purchase(writer, "p-1", 1)
    assert stock(writer) == (5, 1)
    assert writer.outbox.count_documents({}) == 1  # the product's ProductCreated only


def test_oversized_event_is_refused_at_write_time(writer: OutboxWriter) -> None:
    small = OutboxWriter(writer.client, writer.database.name, max_event_bytes=1024)
    big = Event.create(
        topic="clickstream",
        aggregate_type="User",
        aggregate_id="u-1",
        type="PageViewed",
        payload={"user_id": "u-1", "url": "/" + "x" * 1500, "timestamp": "2024-05-01T10:00:00Z"},
    )

    def work(session: ClientSession) -> tuple[None, list[Event]]:
        small.database["page_views"].insert_one({"_id": big.event_id}, session=session)
        return None, [big]

    with pytest.raises(EventTooLargeError, match="1024-byte limit"):
        small.transact(work)
    assert small.database["page_views"].count_documents({}) == 0
    assert small.outbox.count_documents({"type": "PageViewed"}) == 0


def test_outbox_indexes(writer: OutboxWriter, settings: Settings) -> None:
    indexes = writer.outbox.index_information()
    assert indexes["creation_order"]["key"] == [("occurred_at", 1), ("version", 1), ("_id", 1)]
    # No TTL index: retention is the tailer's, which never deletes what has not reached Kafka.
    assert not [i for i in indexes.values() if "expireAfterSeconds" in i]
