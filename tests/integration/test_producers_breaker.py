"""The circuit breaker against a real outage: a PRIVATE SecantusDB instance is stopped and started again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pymongo import MongoClient

from cdc.settings import Settings
from infra.servers.mongo import MongoServer
from producers import product
from tests.helpers import free_port, unique, wait_for

pytestmark = pytest.mark.integration

PORT = free_port()  # not a fixed port: another checkout's suite may run this test at the same time
WAIT_QUEUE_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def private(settings: Settings) -> Iterator[tuple[Settings, MongoServer]]:
    s = settings.model_copy(update={
        "mongo_uri_override": None,
        "mongo_port": PORT,
        "mongo_wait_queue_timeout_ms": int(WAIT_QUEUE_TIMEOUT * 1000),
        "mongo_server_selection_timeout_ms": 1500,
        "service_db_prefix": unique("prodbrk") + "_",
    })
    server = MongoServer(s, instance="producers-breaker", port=PORT)
    server.ensure_running()
    try:
        yield s, server
    finally:
        server.stop()


def timed(http: TestClient, method: str, path: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = http.request(method, path)
    return response, time.monotonic() - started


def test_mongo_down_gives_fast_503_and_recovers(private: tuple[Settings, MongoServer]) -> None:
    s, server = private
    server.ensure_running()
    with TestClient(product.create_app(s)) as http:
        assert http.post("/products/seed?count=2&stock=100").status_code == 200
        assert http.get("/products/p-0001").status_code == 200

        assert server.stop()
        response, elapsed = timed(http, "GET", "/products/p-0001")
        assert response.status_code == 503, response.text
        assert elapsed <= WAIT_QUEUE_TIMEOUT, f"first 503 took {elapsed:.2f}s"
        assert int(response.headers["Retry-After"]) >= 1
        assert "MongoDB unavailable" in response.json()["detail"]
        assert f":{PORT}" not in response.text and "127.0.0.1" not in response.text  # no driver text

        # While it is down, requests fail fast (the breaker is open) instead of queueing on the pool.
        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(lambda _: timed(http, "POST", "/products/p-0001/purchase?quantity=1"),
                                    range(40)))
        assert {r.status_code for r, _ in results} == {503}
        slowest = max(t for _, t in results)
        assert slowest <= WAIT_QUEUE_TIMEOUT, f"a request waited {slowest:.2f}s while MongoDB was down"
        assert sorted(t for _, t in results)[len(results) // 2] < 0.5, "most requests should fail at once"
        assert http.get("/health").status_code == 503

        server.ensure_running()
        wait_for(lambda: http.get("/products/p-0001").status_code == 200, timeout=30,
                 what="a 200 once MongoDB is back")
        bought = http.post("/products/p-0001/purchase?quantity=1")
        assert bought.status_code == 200, bought.text
        assert bought.json()["stock"] == 99  # nothing was decremented while it was down
        assert http.get("/health").json()["breaker"] == "closed"


@pytest.fixture(scope="module")
def slow_mongo(settings: Settings) -> Iterator[tuple[Settings, MongoServer]]:
    """A private SecantusDB that takes failpoints (configureFailPoint), with a 1 s deadline per request."""
    port = free_port()
    s = settings.model_copy(update={
        "mongo_uri_override": None,
        "mongo_port": port,
        "breaker_call_timeout_ms": 1000,
        "breaker_failure_threshold": 2,
        "service_db_prefix": unique("prodslow") + "_",
    })
    server = MongoServer(s, instance="producers-slow", port=port, extra_args=["--enable-test-commands"])
    server.ensure_running()
    try:
        yield s, server
    finally:
        server.stop()


def test_a_slow_write_is_504_and_does_not_open_the_breaker(slow_mongo: tuple[Settings, MongoServer]) -> None:
    s, server = slow_mongo
    admin: MongoClient[dict[str, Any]] = MongoClient(server.uri)
    with TestClient(product.create_app(s)) as http:
        assert http.post("/products/seed?count=5&stock=100").status_code == 200
        # The service's writes take 3 s (its reads do not), three times the 1 s deadline: MongoDB is up, but slow.
        admin.admin.command("configureFailPoint", "failCommand", mode="alwaysOn", data={
            "failCommands": ["findAndModify", "update"], "blockConnection": True, "blockTimeMS": 3000,
            "appName": "cdcflow-product",
        })
        try:
            # A purchase (a transaction) and a seed (a bulk write: pymongo's NetworkTimeout), each more often than
            # the failure threshold.
            for path in ["/products/p-0001/purchase?quantity=1", "/products/seed?count=1"] * 3:
                response, elapsed = timed(http, "POST", path)
                assert response.status_code == 504, response.text
                assert response.json()["detail"].startswith("MongoDB did not answer within 1 s")
                assert "127.0.0.1" not in response.text
                assert elapsed < 2.5, f"the 504 took {elapsed:.1f}s"
                health = http.get("/health")
                assert health.status_code == 200 and health.json()["breaker"] == "closed", health.text
            assert http.get("/products/p-0004").status_code == 200  # reads still go through
        finally:
            admin.admin.command("configureFailPoint", "failCommand", mode="off")
            admin.close()
        bought = http.post("/products/p-0005/purchase?quantity=1")
        assert bought.status_code == 200, bought.text
