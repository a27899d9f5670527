"""An event carrying an over-long id or text is refused at write time, for each service: the outbox writer and
the services' functions raise InvalidEventError and write nothing; over HTTP the answer is 422 with the reason."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from pymongo import MongoClient
from pymongo.client_session import ClientSession

from cdc.errors import InvalidEventError
from cdc.event import Event
from cdc.limits import MAX_ID_LENGTH, MAX_NAME_LENGTH, MAX_TEXT_LENGTH, MAX_URL_LENGTH
from cdc.mongo import mongo_client
from cdc.outbox_writer import OutboxWriter
from cdc.schemas import OrderItem
from cdc.services import SERVICE_DATABASES, service_database
from cdc.settings import Settings
from producers import clickstream, order, product
from producers.app import ServiceContext, context, create_service_app
from producers.clickstream import PageViewIn, record_page_views
from producers.order import OrderStore
from producers.order_state import CancelOrder, CreateOrder
from producers.product import ProductIn, purchase, seed_catalogue
from tests.helpers import unique

pytestmark = pytest.mark.integration

Document = dict[str, Any]
LONG_ID = "i" * (MAX_ID_LENGTH + 1)


@pytest.fixture
def svc_settings(settings: Settings, mongo: object) -> Iterator[Settings]:
    s = settings.model_copy(update={"service_db_prefix": unique("lim") + "_"})
    yield s
    client: MongoClient[Document] = mongo_client(s)
    try:
        for name in SERVICE_DATABASES:
            client.drop_database(service_database(s, name))
    finally:
        client.close()


@pytest.fixture
def writers(svc_settings: Settings) -> Iterator[dict[str, OutboxWriter]]:
    client = mongo_client(svc_settings)
    yield {name: OutboxWriter(client, service_database(svc_settings, name)) for name in SERVICE_DATABASES}
    client.close()


def everything(writer: OutboxWriter) -> dict[str, list[Document]]:
    """Every document of every collection of the writer's database (what 'nothing written' is compared with)."""
    db = writer.database
    return {name: list(db[name].find().sort("_id", 1)) for name in sorted(db.list_collection_names())}


# -- at the writer ----------------------------------------------------------------------------------------


def test_the_writer_refuses_an_over_long_payload_string_and_rolls_the_business_write_back(
    writers: dict[str, OutboxWriter],
) -> None:
    writer = writers["clickstream"]
    for field, value in (("user_id", LONG_ID), ("url", "/" * (MAX_URL_LENGTH + 1))):
        payload = {"user_id": "u-1", "url": "/", "timestamp": "2026-01-01T00:00:00Z", field: value}
        event = Event.create(topic="clickstream", aggregate_type="User", aggregate_id="u-1", type="PageViewed",
                             payload=payload)

        def work(session: ClientSession, event: Event = event) -> tuple[None, list[Event]]:
            writer.database["page_views"].insert_one({"_id": event.event_id}, session=session)
            return None, [event]

        with pytest.raises(InvalidEventError, match=f"invalid PageViewed payload: {field}"):
            writer.transact(work)
        assert writer.database["page_views"].count_documents({}) == 0
        assert writer.outbox.count_documents({}) == 0


def test_product_service_refuses_an_over_long_id_or_name_and_writes_nothing(
    writers: dict[str, OutboxWriter],
) -> None:
    writer = writers["product"]
    seed_catalogue(writer, [ProductIn(id="p-1", name="Lamp", price=Decimal("1.00"), stock=5)])
    before = everything(writer)
    with pytest.raises(InvalidEventError, match="invalid InventoryDecremented payload: order_id"):
        purchase(writer, "p-1", 1, order_id=LONG_ID)
    # model_construct: what a caller that skipped the request model would hand over.
    for bad, reason in (
        (ProductIn.model_construct(id=LONG_ID, name="Lamp", price=Decimal("1.00"), stock=1), "product_id"),
        (ProductIn.model_construct(id="p-1", name="n" * (MAX_NAME_LENGTH + 1), price=Decimal("1.00"), stock=5),
         "name"),
        (ProductIn.model_construct(id="p-2", name="n" * (MAX_TEXT_LENGTH + 1), price=Decimal("1.00"), stock=5),
         "name"),
    ):
        with pytest.raises(InvalidEventError, match=f"invalid Product(Created|Updated) payload: {reason}"):
            seed_catalogue(writer, [ProductIn(id="p-3", name="Fine", price=Decimal("1.00"), stock=1), bad])
    assert everything(writer) == before


def test_order_service_refuses_an_over_long_id_or_reason_and_writes_nothing(
    writers: dict[str, OutboxWriter],
) -> None:
    store = OrderStore(writers["order"])
    store.ensure_indexes()
    items = [OrderItem(product_id="p-1", quantity=1, unit_price=Decimal("5.00"))]
    store.execute("o-1", CreateOrder(customer_id="c-1", items=items))
    before = everything(store.writer)
    with pytest.raises(InvalidEventError, match="invalid OrderCreated payload: order_id: String should have at most"):
        store.execute(LONG_ID, CreateOrder(customer_id="c-1", items=items))
    with pytest.raises(InvalidEventError, match="invalid OrderCreated payload: customer_id"):
        store.execute("o-2", CreateOrder.model_construct(customer_id=LONG_ID, items=items, currency="EUR"))
    with pytest.raises(InvalidEventError, match="invalid OrderCancelled payload: reason"):
        store.execute("o-1", CancelOrder.model_construct(reason="r" * (MAX_TEXT_LENGTH + 1)))
    assert everything(store.writer) == before
    assert store.load("o-1").version == 1


def test_clickstream_service_refuses_an_over_long_id_or_url_and_writes_nothing(
    writers: dict[str, OutboxWriter],
) -> None:
    writer = writers["clickstream"]
    record_page_views(writer, [PageViewIn(user_id="u-1", url="/")])
    before = everything(writer)
    fine = PageViewIn(user_id="u-2", url="/a")
    for bad, match in (
        (PageViewIn.model_construct(user_id=LONG_ID, url="/", product_id=None, referrer=None, timestamp=None),
         "user_id"),
        (PageViewIn.model_construct(user_id="u-1", url="/" * (MAX_URL_LENGTH + 1), product_id=None,
                                    referrer=None, timestamp=None), "url"),
    ):
        with pytest.raises(InvalidEventError, match=f"invalid PageViewed payload: {match}"):
            record_page_views(writer, [fine, bad])  # the whole batch, or nothing
    assert everything(writer) == before


# -- over HTTP ------------------------------------------------------------------------------------------

FACTORIES: dict[str, Callable[..., FastAPI]] = {
    "product": product.create_app,
    "order": order.create_app,
    "clickstream": clickstream.create_app,
}
ITEM = {"product_id": "p-1", "quantity": 1, "unit_price": "5.00"}

HTTP_CASES: list[tuple[str, str, str, dict[str, Any], str]] = [
    # (service, method, path, kwargs, a field the reason names); "{o}" = an order created first
    ("product", "POST", "/products", {"json": [{"id": LONG_ID, "name": "x", "price": "1", "stock": 1}]}, "id"),
    ("product", "POST", "/products",
     {"json": [{"id": "p-9", "name": "n" * (MAX_NAME_LENGTH + 1), "price": "1", "stock": 1}]}, "name"),
    ("product", "POST", f"/products/{LONG_ID}/purchase?quantity=1", {}, "product_id"),
    ("product", "POST", f"/products/p-1/purchase?quantity=1&order_id={LONG_ID}", {}, "order_id"),
    ("order", "POST", "/orders", {"json": {"customer_id": LONG_ID, "items": [ITEM]}}, "customer_id"),
    ("order", "POST", "/orders", {"json": {"customer_id": "c", "items": [{**ITEM, "product_id": LONG_ID}]}},
     "product_id"),
    ("order", "POST", "/orders/{o}/cancel", {"json": {"reason": "r" * (MAX_TEXT_LENGTH + 1)}}, "reason"),
    ("order", "POST", "/orders/{o}/pay", {"json": {"payment_id": LONG_ID}}, "payment_id"),
    ("clickstream", "POST", "/pageviews", {"json": {"user_id": LONG_ID, "url": "/"}}, "user_id"),
    ("clickstream", "POST", "/pageviews", {"json": {"user_id": "u", "url": "/" * (MAX_URL_LENGTH + 1)}}, "url"),
    ("clickstream", "POST", "/pageviews/batch",
     {"json": [{"user_id": "u", "url": "/"}, {"user_id": "u", "url": "/", "referrer": "/" * 2001}]}, "referrer"),
]


@pytest.fixture
def apps(svc_settings: Settings) -> Iterator[dict[str, TestClient]]:
    clients = {name: TestClient(factory(svc_settings)) for name, factory in FACTORIES.items()}
    for c in clients.values():
        c.__enter__()
    clients["product"].post("/products", json=[{"id": "p-1", "name": "Lamp", "price": "5.00", "stock": 9}])
    yield clients
    for c in clients.values():
        c.__exit__(None, None, None)


@pytest.mark.parametrize(("service", "method", "path", "kwargs", "field"), HTTP_CASES,
                         ids=[f"{c[0]}-{c[4]}-{i}" for i, c in enumerate(HTTP_CASES)])
def test_over_long_ids_and_texts_get_422_with_the_reason_and_write_nothing(
    apps: dict[str, TestClient], service: str, method: str, path: str, kwargs: dict[str, Any], field: str
) -> None:
    http = apps[service]
    if "{o}" in path:
        created = http.post("/orders", json={"customer_id": "c", "items": [ITEM]})
        assert created.status_code == 201
        path = path.replace("{o}", created.json()["order_id"])
    ctx: ServiceContext = http.app.state.ctx  # type: ignore[attr-defined]
    before = everything(ctx.writer)
    response = http.request(method, path, **kwargs)
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]
    assert everything(ctx.writer) == before


def test_an_event_the_writer_refuses_is_a_422_with_the_reason(svc_settings: Settings) -> None:
    """Whatever a route let through, the writer's refusal reaches the client as 422, not a 500."""

    def routes(app: FastAPI) -> None:
        @app.post("/write")
        def write(ctx: ServiceContext = Depends(context)) -> dict[str, str]:
            event = Event.create(topic="inventory", aggregate_type="Product", aggregate_id="p-1",
                                 type="InventoryDecremented", version=1,
                                 payload={"product_id": LONG_ID, "quantity": 1, "stock_after": 0})
            ctx.run(lambda: ctx.writer.write([event]))
            return {"written": event.event_id}

    app = create_service_app("product", svc_settings, setup=lambda ctx: None, routes=routes)
    with TestClient(app) as http:
        response = http.post("/write")
        assert response.status_code == 422
        assert "invalid InventoryDecremented payload: product_id" in response.json()["detail"]
        assert http.app.state.ctx.writer.outbox.count_documents({}) == 0  # type: ignore[attr-defined]
