"""The HTTP read API against the real stores: 200s with the read models' data, 404 and 422 paths, OpenAPI."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from cdc.settings import Settings
from sinks.read_api import create_app
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
    assert clicks == {"user_id", "day", "from", "to"}


def test_a_store_that_is_down_is_503(settings: Settings, seeded: Seeded) -> None:
    down = settings.model_copy(update={"postgres_port": 1})  # nothing listens there
    with TestClient(create_app(down, seeded.namespace)) as c:  # starts anyway; the sink retries per request
        r = c.get("/orders/o-c1")
        assert r.status_code == 503
        assert r.headers["Retry-After"]
        assert c.get("/top-products", params={"day": seeded.day.isoformat()}).status_code == 200
