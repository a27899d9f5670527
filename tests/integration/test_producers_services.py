"""The three services over HTTP on the real server: bad input, one client per process, a database per
service, snapshots against a full replay, and the load generator."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from pymongo import MongoClient, monitoring

from cdc.http_api import ApiError, ApiKind, auth_headers
from cdc.limits import MAX_STOCK
from cdc.mongo import mongo_client
from cdc.outbox_writer import OutboxWriter
from cdc.schemas import OrderItem
from cdc.services import SERVICE_DATABASES, service_database
from cdc.settings import Settings
from infra.servers.base import Server
from producers import clickstream, order, product
from producers.load import Mix, Targets, run_load
from producers.order import OrderStore
from producers.order_state import (
    CancelOrder,
    Command,
    ConfirmPayment,
    CreateOrder,
    DeliverOrder,
    RefundOrder,
    ShipOrder,
    TransitionError,
)
from tests.helpers import free_port, unique, wait_for
from tests.http_support import WRITE_KEY

pytestmark = pytest.mark.integration

Document = dict[str, Any]
FACTORIES: dict[str, Callable[..., FastAPI]] = {
    "product": product.create_app,
    "order": order.create_app,
    "clickstream": clickstream.create_app,
}


@pytest.fixture(scope="module")
def svc_settings(settings: Settings, mongo: Server) -> Iterator[Settings]:
    s = settings.model_copy(
        update={"service_db_prefix": unique("prodsvc") + "_", "order_snapshot_interval": 3}
    )
    yield s
    client: MongoClient[Document] = MongoClient(s.mongo_uri)
    for name in SERVICE_DATABASES:
        client.drop_database(service_database(s, name))
    client.close()


@pytest.fixture(scope="module")
def apps(svc_settings: Settings) -> Iterator[dict[str, TestClient]]:
    clients = {name: TestClient(factory(svc_settings)) for name, factory in FACTORIES.items()}
    for c in clients.values():
        c.__enter__()
    clients["product"].post("/products", json=[{"id": "p-1", "name": "Lamp", "price": "10.00", "stock": 3}])
    yield clients
    for c in clients.values():
        c.__exit__(None, None, None)


# -- bad input: 404 / 409 / 422 with a reason, never a 500 -----------------------------------------------


def _new_order(http: TestClient, *, paid: bool = False) -> str:
    oid = unique("o")
    body = {
        "order_id": oid,
        "customer_id": "c-1",
        "items": [{"product_id": "p-1", "quantity": 2, "unit_price": "10.00"}],
    }
    assert http.post("/orders", json=body).status_code == 201
    if paid:
        assert http.post(f"/orders/{oid}/pay").status_code == 200
    return oid


BAD_REQUESTS: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    # (service, method, path, kwargs, status, reason fragment); "{o}" = a created order, "{p}" = a paid one
    ("product", "GET", "/products/nope", {}, 404, "Product nope not found"),
    ("product", "POST", "/products/nope/purchase?quantity=1", {}, 404, "not found"),
    ("product", "POST", "/products/p-1/purchase?quantity=99", {}, 409, "Insufficient stock"),
    ("product", "POST", "/products/p-1/purchase?quantity=0", {}, 422, "greater than 0"),
    ("product", "POST", "/products/p-1/purchase?quantity=-3", {}, 422, "greater than 0"),
    ("product", "POST", "/products/p-1/purchase?quantity=abc", {}, 422, "valid integer"),
    ("product", "POST", "/products/p-1/purchase?quantity=1.5", {}, 422, "valid integer"),
    ("product", "POST", "/products/p-1/purchase", {}, 422, "quantity: Field required"),
    (
        "product",
        "POST",
        "/products",
        {"json": [{"id": "x", "name": "X", "price": "-1", "stock": 1}]},
        422,
        "price",
    ),
    (
        "product",
        "POST",
        "/products",
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        422,
        "JSON",
    ),
    ("order", "GET", "/orders/nope", {}, 404, "Order nope not found"),
    ("order", "POST", "/orders/nope/pay", {}, 404, "Order nope not found"),
    ("order", "POST", "/orders/nope/ship", {}, 404, "not found"),
    ("order", "POST", "/orders/nope/deliver", {}, 404, "not found"),
    ("order", "POST", "/orders/nope/refund", {}, 404, "not found"),
    ("order", "POST", "/orders/nope/cancel", {}, 404, "not found"),
    ("order", "POST", "/orders", {"json": {"customer_id": "c"}}, 422, "items: Field required"),
    ("order", "POST", "/orders", {"json": {"customer_id": "c", "items": []}}, 422, "items"),
    (
        "order",
        "POST",
        "/orders",
        {"json": {"customer_id": "c", "items": [{"product_id": "p", "quantity": 0, "unit_price": "1"}]}},
        422,
        "quantity",
    ),
    ("order", "POST", "/orders/{o}/ship", {}, 409, "Cannot ship an order before payment"),
    ("order", "POST", "/orders/{o}/deliver", {}, 409, "not shipped"),
    ("order", "POST", "/orders/{o}/refund", {}, 409, "not paid"),
    ("order", "POST", "/orders/{o}/pay", {"json": {"amount": "1.00"}}, 409, "does not match the order total"),
    ("order", "POST", "/orders/{p}/pay", {}, 409, "Order already paid"),
    ("order", "POST", "/orders/{p}/refund", {"json": {"amount": "500.00"}}, 409, "exceeds"),
    ("order", "POST", "/orders/{p}/refund", {"json": {"amount": "-1"}}, 422, "greater than 0"),
    ("order", "POST", "/orders/{p}/ship", {"json": {"carrier": ""}}, 422, "carrier"),
    ("clickstream", "POST", "/pageviews", {"json": {"url": "/"}}, 422, "user_id: Field required"),
    (
        "clickstream",
        "POST",
        "/pageviews",
        {"json": {"user_id": "u", "url": "/", "timestamp": "yesterday"}},
        422,
        "timestamp",
    ),
    ("clickstream", "POST", "/pageviews/batch", {"json": []}, 422, "at least 1"),
    ("clickstream", "POST", "/pageviews/batch", {"json": [{"user_id": "u"}]}, 422, "url"),
    ("clickstream", "POST", "/pageviews/batch", {"json": {"user_id": "u", "url": "/"}}, 422, "valid list"),
    # Found by Schemathesis: out of range numbers and times were 500s.
    ("product", "POST", "/products", {"json": [{"id": "x", "name": "X", "price": "1", "stock": 2**63}]}, 422,
     f"stock: Input should be less than or equal to {MAX_STOCK}"),
    ("product", "POST", f"/products/seed?stock={2**63}", {}, 422, "stock"),
    ("product", "POST", f"/products/p-1/purchase?quantity={2**63}", {}, 422, "quantity"),
    ("order", "POST", "/orders",
     {"json": {"customer_id": "c", "items": [{"product_id": "p", "quantity": 2**63, "unit_price": "1"}]}}, 422,
     "items.0.quantity: Input should be less than or equal to 1000000"),
    ("order", "POST", "/orders",
     {"json": {"customer_id": "c", "items": [{"product_id": "p", "quantity": 1000, "unit_price": "99999999.99"}]}},
     422, "over the largest amount an order may have"),
    ("clickstream", "POST", "/pageviews",
     {"json": {"user_id": "u", "url": "/", "timestamp": "0001-01-01T00:00:00+01:00"}}, 422,
     "timestamp: Value error, out of the representable range once converted to UTC"),
    ("clickstream", "POST", "/pageviews/batch",
     {"json": [{"user_id": "u", "url": "/", "timestamp": "9999-12-31T23:59:59-01:00"}]}, 422, "timestamp"),
    ("clickstream", "POST", "/pageviews", {"json": {"user_id": "u", "url": "/", "timestamp": "2999-01-01T00:00:00Z"}},
     422, "more than a day in the future"),
    ("clickstream", "POST", "/pageviews", {"json": {"user_id": "u", "url": "/", "timestamp": 0}}, 422,
     "expected an ISO-8601 date-time string"),
    ("clickstream", "POST", "/pageviews", {"json": {"user_id": "u" * 201, "url": "/"}}, 422, "user_id"),
    ("clickstream", "POST", "/pageviews/batch", {"content": b"[" + b" " * (2 * 1024 * 1024) + b"]",
     "headers": {"content-type": "application/json"}}, 413, "over the limit of 1048576 bytes"),
]


@pytest.mark.parametrize(
    ("service", "method", "path", "kwargs", "status", "reason"),
    BAD_REQUESTS,
    ids=[f"{r[0]}-{r[1]}-{r[2]}-{r[4]}" for r in BAD_REQUESTS],
)
def test_bad_input_gets_a_reason_never_a_500(
    apps: dict[str, TestClient],
    service: str,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    reason: str,
) -> None:
    http = apps[service]
    if "{o}" in path:
        path = path.replace("{o}", _new_order(http))
    if "{p}" in path:
        path = path.replace("{p}", _new_order(http, paid=True))
    response = http.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert reason in response.json()["detail"]
    body = ApiError.model_validate(response.json())  # the one error body, as the OpenAPI schema declares it
    assert isinstance(body.detail, str) and (body.errors is not None) == (status == 422)


@pytest.mark.parametrize("name", FACTORIES)
def test_every_route_declares_its_errors_with_the_one_error_body(svc_settings: Settings, name: str) -> None:
    schema = FACTORIES[name](svc_settings).openapi()
    assert schema["components"]["schemas"]["ApiError"]["required"] == ["detail"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            errors = {code: r for code, r in operation["responses"].items() if code >= "400"}
            if path != "/health":
                assert {"401", "403", "422", "503", "504"} <= set(errors), (method, path, sorted(errors))
            for code, response in errors.items():
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/ApiError", (method, path, code)


def test_refund_twice_and_refused_writes_leave_no_event(apps: dict[str, TestClient]) -> None:
    http = apps["order"]
    oid = _new_order(http, paid=True)
    assert http.post(f"/orders/{oid}/refund").status_code == 200
    second = http.post(f"/orders/{oid}/refund")
    assert second.status_code == 409 and second.json()["detail"] == "Order already refunded"
    db = http.app.state.ctx.db  # type: ignore[attr-defined]
    assert db["order_events"].count_documents({"order_id": oid}) == 3
    assert db["outbox"].count_documents({"aggregate_id": oid}) == 3


# -- one client per process ------------------------------------------------------------------------------


def test_200_requests_create_exactly_one_mongo_client(
    svc_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    created: list[MongoClient[Document]] = []
    real_init = MongoClient.__init__

    def counting_init(self: MongoClient[Document], *args: Any, **kwargs: Any) -> None:
        created.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(MongoClient, "__init__", counting_init)
    with TestClient(product.create_app(svc_settings)) as http:
        http.post("/products", json=[{"id": "many", "name": "Many", "price": "1.00", "stock": 1000}])
        codes = [http.get("/products/many").status_code for _ in range(100)]
        codes += [http.post("/products/many/purchase?quantity=1").status_code for _ in range(99)]
        assert codes == [200] * 199
        assert http.app.state.ctx.client is created[0]  # type: ignore[attr-defined]
    assert len(created) == 1


# -- a database per service ------------------------------------------------------------------------------


class CommandLog(monitoring.CommandListener):
    def __init__(self) -> None:
        self.commands: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        with self._lock:
            self.commands.append((event.database_name, event.command_name))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


# Commands a driver sends to `admin` on its own (handshake, transactions, sessions, health).
ADMIN_COMMANDS = {
    "ping",
    "hello",
    "ismaster",
    "isMaster",
    "commitTransaction",
    "abortTransaction",
    "endSessions",
    # Authentication: the services' users are defined in `admin` (authSource=admin), like every MongoDB user.
    "saslStart",
    "saslContinue",
}


def test_no_service_touches_another_services_database(svc_settings: Settings) -> None:
    s = svc_settings.model_copy(update={"service_db_prefix": unique("prodiso") + "_"})
    logs = {name: CommandLog() for name in FACTORIES}
    try:
        for name, factory in FACTORIES.items():
            with TestClient(factory(s, client_options={"event_listeners": [logs[name]]})) as http:
                http.get("/health")
                if name == "product":
                    http.post("/products/seed?count=3&stock=5")
                    http.get("/products/p-0001")
                    http.post("/products/p-0001/purchase?quantity=1")
                    http.post("/products/p-0001/purchase?quantity=100")
                elif name == "order":
                    oid = _new_order(http, paid=True)
                    for step in ("ship", "deliver", "refund", "refund", "cancel"):
                        http.post(f"/orders/{oid}/{step}")
                    http.get(f"/orders/{oid}")
                else:
                    http.post("/pageviews", json={"user_id": "u", "url": "/"})
                    http.post("/pageviews/batch", json=[{"user_id": "u", "url": "/a"}] * 3)
        for name, log in logs.items():
            own = service_database(s, name)
            databases = {db for db, _ in log.commands}
            assert own in databases, f"{name} should have written to {own}"
            foreign = [
                (db, cmd)
                for db, cmd in log.commands
                if db != own and not (db == "admin" and cmd in ADMIN_COMMANDS)
            ]
            assert foreign == [], f"{name} service touched other databases: {foreign}"
    finally:
        client: MongoClient[Document] = MongoClient(s.mongo_uri)
        for name in SERVICE_DATABASES:
            client.drop_database(service_database(s, name))
        client.close()


# -- snapshots: snapshot + tail == full replay, on the real store ----------------------------------------

money = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("20.00"), places=2)
lifecycles = st.lists(
    st.one_of(
        st.builds(ConfirmPayment),
        st.builds(ShipOrder),
        st.builds(DeliverOrder),
        st.builds(CancelOrder),
        st.builds(RefundOrder, amount=money),
        st.builds(RefundOrder),
    ),
    min_size=1,
    max_size=14,
)


@pytest.fixture(scope="module")
def store_factory(svc_settings: Settings) -> Iterator[Callable[[int], OrderStore]]:
    client = mongo_client(svc_settings)
    db = unique("prodsnap_order_service")
    writer = OutboxWriter(client, db)

    def make(interval: int) -> OrderStore:
        store = OrderStore(writer, snapshot_interval=interval)
        store.ensure_indexes()
        return store

    yield make
    client.drop_database(db)
    client.close()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lifecycle=lifecycles, interval=st.integers(min_value=1, max_value=4))
def test_state_from_snapshot_and_tail_equals_full_replay(
    store_factory: Callable[[int], OrderStore], lifecycle: list[Command], interval: int
) -> None:
    store = store_factory(interval)
    oid = str(uuid.uuid4())
    items = [OrderItem(product_id="p-1", quantity=5, unit_price=Decimal("10.00"))]
    store.execute(oid, CreateOrder(customer_id="c-1", items=items))
    for command in lifecycle:
        with contextlib.suppress(TransitionError):
            store.execute(oid, command)
    replayed = store.replay(oid)
    assert store.load(oid) == replayed
    snapshot = store.snapshots.find_one({"_id": oid})
    expected_snapshot = (replayed.version // interval) * interval
    assert (snapshot["version"] if snapshot else 0) == expected_snapshot
    assert store.events.count_documents({"order_id": oid}) == replayed.version
    assert store.writer.outbox.count_documents({"aggregate_id": oid}) == replayed.version


# -- the load generator ----------------------------------------------------------------------------------



@pytest.fixture
def served(svc_settings: Settings) -> Iterator[Targets]:
    yield from _served(svc_settings.model_copy(update={"service_db_prefix": unique("prodload") + "_"}))


@pytest.fixture
def served_with_key(svc_settings: Settings) -> Iterator[Targets]:
    yield from _served(svc_settings.model_copy(update={
        "service_db_prefix": unique("prodkey") + "_", "write_api_key": SecretStr(WRITE_KEY),
    }))


def _served(s: Settings) -> Iterator[Targets]:
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []
    urls: dict[str, str] = {}
    for name, factory in FACTORIES.items():
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                factory(s), host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        urls[name] = f"http://127.0.0.1:{port}"
    try:
        for server, _ in servers:
            wait_for(lambda server=server: server.started, timeout=30, what="uvicorn start")  # type: ignore[misc]
        yield Targets(
            product=urls["product"], order=urls["order"], clickstream=urls["clickstream"],
            headers=auth_headers(s, ApiKind.WRITE),
        )
    finally:
        for server, thread in servers:
            server.should_exit = True
            thread.join(timeout=10)
        client: MongoClient[Document] = MongoClient(s.mongo_uri)
        for name in SERVICE_DATABASES:
            client.drop_database(service_database(s, name))
        client.close()


def test_load_generates_the_whole_lifecycle_at_about_the_target_rate(served: Targets) -> None:
    mix = Mix(buy=0.6, cancel=0.1, refund=0.5, step_delay=0.05, products=5)
    report = run_load(served, rate=40, duration=4, seed=7, workers=16, mix=mix)
    print(report.render())
    assert report.failed == 0, report.failures
    for action in ("pageview", "purchase", "create", "pay", "ship", "deliver"):
        assert report.requests[action] > 0, f"no {action} in {dict(report.requests)}"
    achieved = report.as_dict()["achieved_request_rate"]
    assert achieved >= 40 * 0.7, report.render()


def test_load_sends_the_write_key_when_one_is_configured(served_with_key: Targets) -> None:
    mix = Mix(buy=0.5, step_delay=0.05, products=3)
    assert served_with_key.headers == {"Authorization": f"Bearer {WRITE_KEY}"}
    report = run_load(served_with_key, rate=20, duration=2, seed=3, workers=8, mix=mix)
    assert report.failed == 0 and report.ok > 0, report.failures
    without = Targets(served_with_key.product, served_with_key.order, served_with_key.clickstream)
    with pytest.raises(httpx.HTTPStatusError) as info:
        run_load(without, rate=20, duration=1, seed=3, workers=8, mix=mix)
    assert info.value.response.status_code == 401
