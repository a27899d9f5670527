"""Concurrency on the real server: no oversell, and per-order versions without gap or repeat."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from pymongo import MongoClient
from pymongo.errors import DuplicateKeyError

from cdc.event import Event
from cdc.services import service_database
from cdc.settings import Settings
from infra.servers.base import Server
from producers import order, product
from tests.helpers import unique

pytestmark = pytest.mark.integration

Document = dict[str, Any]


@pytest.fixture(scope="module")
def svc_settings(settings: Settings, mongo: Server) -> Iterator[Settings]:
    s = settings.model_copy(update={"service_db_prefix": unique("prodconc") + "_"})
    yield s
    client: MongoClient[Document] = MongoClient(s.mongo_uri)
    for name in ("product", "order"):
        client.drop_database(service_database(s, name))
    client.close()


def test_50_concurrent_purchases_on_stock_10(svc_settings: Settings) -> None:
    with TestClient(product.create_app(svc_settings)) as http:
        assert http.post(
            "/products", json=[{"id": "hot", "name": "Hot", "price": "9.99", "stock": 10}]
        ).is_success

        def buy(_: int) -> int:
            code: int = http.post("/products/hot/purchase", params={"quantity": 1}).status_code
            return code

        with ThreadPoolExecutor(max_workers=50) as pool:
            codes = list(pool.map(buy, range(50)))
        assert sorted(set(codes)) == [200, 409], codes
        assert codes.count(200) == 10
        assert http.get("/products/hot").json()["stock"] == 0
        db = http.app.state.ctx.db  # type: ignore[attr-defined]
        events = [Event.parse(d) for d in db["outbox"].find({"aggregate_id": "hot", "type": "InventoryDecremented"})]
        assert len(events) == 10
        # Version 1 is the product's ProductCreated; the purchases took 2 … 11, no gap, no repeat.
        assert sorted(e.version or 0 for e in events) == list(range(2, 12))
        assert sorted(cast(int, e.payload["stock_after"]) for e in events) == list(range(10))


def test_concurrent_appends_to_one_order_get_versions_without_gap(svc_settings: Settings) -> None:
    with TestClient(order.create_app(svc_settings)) as http:
        oid = unique("o")
        body = {
            "order_id": oid,
            "customer_id": "c-1",
            "items": [{"product_id": "p-1", "quantity": 1, "unit_price": "100.00"}],
        }
        assert http.post("/orders", json=body).status_code == 201
        assert http.post(f"/orders/{oid}/pay").status_code == 200

        def refund(_: int) -> tuple[int, Any]:
            r = http.post(f"/orders/{oid}/refund", json={"amount": "1.00", "reason": "partial"})
            return r.status_code, r.json()

        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(refund, range(30)))
        ok = [body for code, body in results if code == 200]
        assert all(code in (200, 409) for code, _ in results), results
        assert len(ok) >= 20, "appends should mostly win after retrying"
        # Each successful append got its own version; together they fill 3..n with no gap or repeat.
        assert sorted(b["version"] for b in ok) == list(range(3, 3 + len(ok)))

        db = http.app.state.ctx.db  # type: ignore[attr-defined]
        stored = [d["version"] for d in db["order_events"].find({"order_id": oid}).sort("version", 1)]
        assert stored == list(range(1, 3 + len(ok)))
        outbox = sorted(d["version"] for d in db["outbox"].find({"aggregate_id": oid}))
        assert outbox == stored
        final = http.get(f"/orders/{oid}").json()
        assert final["version"] == stored[-1] and final["refunds"] == len(ok)

        # The unique (order_id, version) index is what makes a repeat impossible.
        with pytest.raises(DuplicateKeyError):
            db["order_events"].insert_one({"order_id": oid, "version": 2, "type": "PaymentConfirmed"})
