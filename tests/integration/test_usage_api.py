"""The HTTP read API against the real stores: 200s with the read models' data, 404 and 422 paths, OpenAPI."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from cdc.settings import Settings
from sinks.base import SinkTimeoutError
from sinks.clickstream import ClickstreamSink
from sinks.purchase_graph import PurchaseGraphSink
from sinks.read_api import create_app
from tests.http_support import READ_KEY, WRITE_KEY
from tests.usage_support import Seeded, seeded_read_models

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def seeded(settings: Settings, postgres: object, neo4j: object, cassandra: object) -> Iterator[Seeded]:
    with seeded_read_models(settings) as s:
        yield s


@pytest.fixture(scope="module")
def client(settings: Settings, seeded: Seeded) -> Iterator[TestClient]:
    with TestClient(create_app(settings, seeded.namespace)) as c:  # runs the lifespan (sinks created once)
        yield c


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_order(client: TestClient) -> None:
    r = client.get("/orders/o-c1")
    assert r.status_code == 200
    assert r.json()["customer_id"] == "c1" and r.json()["status"] == "paid"


def test_recommendations_and_also_bought(client: TestClient) -> None:
    r = client.get("/customers/c1/recommendations", params={"limit": 1})
    assert r.status_code == 200
    assert r.json()["recommendations"] == [{"product_id": "pC", "customers": 2}]
    r = client.get("/products/pA/also-bought")
    assert r.status_code == 200
    assert r.json()["also_bought"] == [{"product_id": "pB", "customers": 1}, {"product_id": "pC", "customers": 1}]


def test_clicks_and_top_products(client: TestClient, seeded: Seeded) -> None:
    r = client.get("/users/u1/clicks", params={"day": seeded.day.isoformat()})
    assert r.status_code == 200 and len(r.json()["views"]) == seeded.views_on_day
    start = f"{seeded.day.isoformat()}T12:01:00Z"
    r = client.get("/users/u1/clicks", params={"from": start, "to": f"{seeded.day.isoformat()}T23:59:59Z"})
    assert r.status_code == 200
    assert [v["product_id"] for v in r.json()["views"]] == ["pB", "pA"]
    r = client.get("/top-products", params={"day": seeded.day.isoformat()})
    assert r.status_code == 200
    assert [(p["product_id"], p["views"]) for p in r.json()["products"]] == seeded.top


@pytest.mark.parametrize(
    ("path", "kind"),
    [("/orders/nope", "order"), ("/customers/nobody/recommendations", "customer"),
     ("/products/pZ/also-bought", "product"), ("/users/nobody/clicks", "user")],
)
def test_unknown_ids_are_404_with_a_reason(client: TestClient, path: str, kind: str) -> None:
    r = client.get(path)
    assert r.status_code == 404
    body = r.json()
    assert body["kind"] == kind
    assert body["id"] in body["detail"]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/top-products", {"day": "2026-13-01"}),
        ("/top-products", {"limit": 0}),
        ("/users/u1/clicks", {"day": "yesterday"}),
        ("/users/u1/clicks", {"from": "2026-01-01T00:00:00Z"}),  # 'to' missing
        ("/users/u1/clicks", {"day": "2026-01-01", "from": "2026-01-01", "to": "2026-01-02"}),
        ("/users/u1/clicks", {"from": "2026-01-02", "to": "2026-01-01"}),  # backwards
        ("/users/u1/clicks", {"from": "2026-01-01", "to": "2026-03-01"}),  # over 31 days
        ("/customers/c1/recommendations", {"limit": 1000}),
    ],
)
def test_bad_parameters_are_422(client: TestClient, path: str, params: dict[str, object]) -> None:
    r = client.get(path, params=params)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


def test_openapi_schema_lists_every_route(client: TestClient) -> None:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    schema = r.json()
    assert schema["info"]["title"] == "cdcflow read API"
    paths = schema["paths"]
    for path in ("/orders/{order_id}", "/customers/{customer_id}/recommendations",
                 "/products/{product_id}/also-bought", "/users/{user_id}/clicks", "/top-products", "/healthz"):
        assert "get" in paths[path], path
    assert "404" in paths["/orders/{order_id}"]["get"]["responses"]
    clicks = {p["name"] for p in paths["/users/{user_id}/clicks"]["get"]["parameters"]}
    assert clicks == {"user_id", "day", "from", "to", "limit", "after"}


def test_a_store_that_is_down_is_503(settings: Settings, seeded: Seeded) -> None:
    down = settings.model_copy(update={"postgres_port": 1})  # nothing listens there
    with TestClient(create_app(down, seeded.namespace)) as c:  # starts anyway; the sink retries per request
        r = c.get("/orders/o-c1")
        assert r.status_code == 503
        assert r.headers["Retry-After"]
        assert r.json() == {"detail": "read model unavailable, retry later"}  # no host, port or user from the driver
        assert c.get("/top-products", params={"day": seeded.day.isoformat()}).status_code == 200


def test_clicks_are_paginated(client: TestClient, seeded: Seeded) -> None:
    day = seeded.day.isoformat()
    everything = client.get("/users/u1/clicks", params={"day": day}).json()
    assert everything["next"] is None and len(everything["views"]) == 3
    pages, after = [], None
    while True:
        params = {"day": day, "limit": 1} | ({"after": after} if after else {})
        page = client.get("/users/u1/clicks", params=params).json()
        pages.extend(page["views"])
        after = page["next"]
        if after is None:
            break
    assert pages == everything["views"]
    window = {"from": f"{day}T00:00:00Z", "to": f"{day}T23:59:59.999Z"}
    first = client.get("/users/u1/clicks", params=window | {"limit": 2}).json()
    rest = client.get("/users/u1/clicks", params=window | {"limit": 2, "after": first["next"]}).json()
    assert first["views"] + rest["views"] == everything["views"] and rest["next"] is None
    for bad in ("nope", "1.not-a-uuid", "9" * 40 + ".00000000-0000-0000-0000-000000000000"):
        r = client.get("/users/u1/clicks", params={"day": day, "after": bad})
        assert r.status_code == 422, r.text
    assert client.get("/users/u1/clicks", params={"day": day, "limit": 1001}).status_code == 422


@pytest.mark.parametrize(
    "params",
    [
        {"day": "0999-12-31"},  # Cassandra once refused the unpadded date: 500
        {"day": "0001-01-01"},
        {"day": "9999-12-31"},
        {"from": "9999-12-01T00:00:00Z", "to": "9999-12-31T23:59:59Z"},
    ],
)
def test_days_outside_what_the_clickstream_can_hold_are_empty(client: TestClient, params: dict[str, str]) -> None:
    r = client.get("/users/u1/clicks", params=params)
    assert r.status_code == 200, r.text
    assert r.json()["views"] == [] and r.json()["next"] is None
    if "day" in params:
        r = client.get("/top-products", params=params)
        assert r.status_code == 200 and r.json()["products"] == []


@pytest.mark.parametrize(
    "params",
    [
        {"from": "0001-01-01T00:00:00+01:00", "to": "0001-01-02T00:00:00Z"},  # was a 500 (OverflowError)
        {"from": "9999-12-30T00:00:00Z", "to": "9999-12-31T23:59:59-01:00"},
        {"day": "0"},
        {"from": "0", "to": "1"},
    ],
)
def test_times_out_of_range_are_422_with_a_reason(client: TestClient, params: dict[str, str]) -> None:
    r = client.get("/users/u1/clicks", params=params)
    assert r.status_code == 422, r.text
    assert "range" in r.json()["detail"] or "ISO-8601" in r.json()["detail"]


def test_the_read_api_takes_the_read_key_only(settings: Settings, seeded: Seeded) -> None:
    keyed = settings.model_copy(update={"read_api_key": SecretStr(READ_KEY), "write_api_key": SecretStr(WRITE_KEY)})
    with TestClient(create_app(keyed, seeded.namespace)) as c:
        assert c.get("/orders/o-c1").status_code == 401
        assert c.get("/orders/o-c1", headers={"Authorization": f"Bearer {WRITE_KEY}"}).status_code == 403
        assert c.get("/orders/o-c1", headers={"Authorization": f"Bearer {READ_KEY}"}).status_code == 200
        assert c.get("/healthz").status_code == 200


def test_a_query_past_its_deadline_is_504(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # The mapping only (the stores' own timeouts are proven below): a sink that reports its deadline passed.
    models = client.app.state.models  # type: ignore[attr-defined]

    def too_slow(*args: object, **kwargs: object) -> None:
        raise SinkTimeoutError("neo4j ended the query after 10 s")

    monkeypatch.setattr(models.purchase_graph, "recommendations", too_slow)
    r = client.get("/customers/c1/recommendations")
    assert r.status_code == 504
    assert r.json() == {"detail": "the read model did not answer within 10 s"}


def test_neo4j_ends_a_read_past_its_timeout(settings: Settings, seeded: Seeded) -> None:
    graph = PurchaseGraphSink(settings, seeded.namespace)
    try:
        started = time.monotonic()
        with pytest.raises(SinkTimeoutError):
            graph._read("UNWIND range(1, 2000000000) AS x RETURN count(x) AS n", timeout=0.5)
        assert time.monotonic() - started < 30
        assert graph.has_product("pA")  # the driver and the sink still work
    finally:
        graph.close()


def test_cassandra_gives_up_on_a_read_past_its_timeout(settings: Settings, seeded: Seeded) -> None:
    sink = ClickstreamSink(settings.model_copy(update={"read_api_query_timeout_seconds": 0.0001}), seeded.namespace)
    try:
        with pytest.raises(SinkTimeoutError):
            sink.top_products(seeded.day)
    finally:
        sink.close()
