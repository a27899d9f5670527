"""Read-your-writes on the real servers: order service -> tailer -> order_view worker -> read API with min_version.

The version the order service answered a write with is what the read API (and `cdcflow query order`) is asked
for: it answers a state at that version or later, waiting for the pipeline when asked to, or 409 with
Retry-After and the version it holds. Many waiting requests share one batched poll of Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pymongo import MongoClient

from cdc.acks import Sent
from cdc.kafka import ensure_topics
from cdc.mongo import mongo_client
from cdc.publisher import Publisher
from cdc.schemas import TOPIC_ORDERS
from cdc.services import SERVICE_DATABASES, service_database
from cdc.settings import REPO_ROOT, Settings
from cdc.tailer import Tailer
from sinks.order_view import OrderViewSink
from sinks.read_api import create_app
from sinks.registry import build_sink
from tests.helpers import free_port, unique, wait_for
from tests.http_support import serve
from tests.streams_support import WorkerProcess, order_lifecycle

pytestmark = pytest.mark.integration

Document = dict[str, Any]


@contextlib.contextmanager
def in_thread(app: Any) -> Iterator[str]:
    """`app` served by uvicorn in a thread on a free port; its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=30, what="uvicorn start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture
def own_orders_topic(settings: Settings, kafka: object, monkeypatch: pytest.MonkeyPatch) -> str:
    """A topic of this test's own that the in-process tailer sends the order service's events to (the live
    `orders` topic feeds the live read models: this test's orders must not reach them)."""
    topic = unique("ryw_orders")
    ensure_topics(settings, [topic], partitions=settings.kafka_partitions)
    real = Publisher.send

    def send(self: Publisher, entry: Sent, *args: Any, **kwargs: Any) -> bool:
        if entry.topic == TOPIC_ORDERS:
            entry.topic = topic
        return real(self, entry, *args, **kwargs)

    monkeypatch.setattr(Publisher, "send", send)
    return topic


# The test's databases and namespace are its own, which the services', workers' and readers' generated users do
# not reach: its processes run as admin.
ADMIN = {"CDCFLOW_ROLE": "admin"}


def query_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", "query", "order", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, **ADMIN})


def test_a_client_reads_its_own_writes_through_the_whole_pipeline(
    settings: Settings, mongo: object, postgres: object, own_orders_topic: str, tmp_path: Path
) -> None:
    topic = own_orders_topic
    prefix = unique("ryw") + "_"
    s = settings.model_copy(update={"service_db_prefix": prefix})
    ns, group = unique("ryw"), unique("ryw.order_view")
    client: MongoClient[Document] = mongo_client(s)
    sink = build_sink("order_view", s, ns)
    sink.setup()  # so the read API finds the table even before the worker's first write
    tailer = Tailer(s, [service_database(s, "order")], client=client).start()
    worker: WorkerProcess | None = WorkerProcess("order_view", topic, group, ns, tmp_path)
    read_env = {**ADMIN, "CDCFLOW_SINK_NAMESPACE": ns, "CDCFLOW_READ_API_MAX_WAIT_MS": "120000"}
    try:
        with serve("order", {**ADMIN, "CDCFLOW_SERVICE_DB_PREFIX": prefix}, tmp_path) as svc, \
                serve("read-api", read_env, tmp_path) as api, httpx.Client(timeout=150) as http:
            def read(order_id: str, **params: int) -> httpx.Response:
                return http.get(f"{api.url}/orders/{order_id}", params=params)

            created = http.post(f"{svc.url}/orders", json={
                "customer_id": "c-1", "items": [{"product_id": "p-1", "quantity": 2, "unit_price": "5.00"}]})
            assert created.status_code == 201, created.text
            order_id, v1 = created.json()["order_id"], created.json()["version"]
            assert v1 == 1

            # Right after the write: waiting gives the written state (the first read may come before the tailer)
            got = read(order_id, min_version=v1, wait_ms=60000)
            assert got.status_code == 200, got.text
            assert got.json()["version"] >= v1 and got.json()["status"] == "created"

            paid = http.post(f"{svc.url}/orders/{order_id}/pay")
            assert paid.status_code == 200 and paid.json()["version"] == 2
            started = time.monotonic()
            got = read(order_id, min_version=2, wait_ms=60000)
            assert got.status_code == 200 and got.json()["status"] == "paid" and got.json()["version"] == 2
            print(f"read-your-writes after pay: {1000 * (time.monotonic() - started):.0f} ms")

            # The pipeline stalls (worker stopped): a write the view cannot have yet
            assert worker is not None
            worker.stop()
            worker = None
            shipped = http.post(f"{svc.url}/orders/{order_id}/ship")
            assert shipped.status_code == 200 and shipped.json()["version"] == 3

            behind = read(order_id, min_version=3)  # no wait: 409 at once
            assert behind.status_code == 409, behind.text
            assert behind.json()["version"] == 2 and behind.json()["id"] == order_id
            assert int(behind.headers["Retry-After"]) >= 1
            started = time.monotonic()
            late = read(order_id, min_version=3, wait_ms=800)
            took = time.monotonic() - started
            assert late.status_code == 409, late.text
            assert late.json()["version"] == 2 and "after waiting 800 ms" in late.json()["detail"]
            assert int(late.headers["Retry-After"]) >= 1
            assert 0.8 <= took < 5, took

            # CLI: the same answers, exit 75 while behind
            cli_behind = query_cli(order_id, "--min-version", "3", "--namespace", ns)
            assert cli_behind.returncode == 75, cli_behind.stderr
            assert "holds version 2, not yet version 3" in cli_behind.stderr and "Traceback" not in cli_behind.stderr
            cli_late = query_cli(order_id, "--min-version", "3", "--wait-ms", "300", "--namespace", ns)
            assert cli_late.returncode == 75 and "after waiting 300 ms" in cli_late.stderr

            # A request waits while the worker comes back; it is answered as soon as the view catches up
            answer: dict[str, httpx.Response] = {}
            waiting = threading.Thread(target=lambda: answer.setdefault("r", read(order_id, min_version=3,
                                                                                  wait_ms=120000)))
            waiting.start()
            time.sleep(0.5)
            assert "r" not in answer
            worker = WorkerProcess("order_view", topic, group, ns, tmp_path, name="order_view-2")
            waiting.join(150)
            assert answer["r"].status_code == 200, answer["r"].text
            assert answer["r"].json()["status"] == "shipped" and answer["r"].json()["version"] == 3

            cli_ok = query_cli(order_id, "--min-version", "3", "--wait-ms", "30000", "--json", "--namespace", ns)
            assert cli_ok.returncode == 0, cli_ok.stderr
            assert json.loads(cli_ok.stdout)["version"] == 3

            # Unknown order: 404 without waiting, 409 (no row yet) after waiting; plain reads are unchanged
            assert read("nope-" + order_id, min_version=1).status_code == 404
            unknown = read("nope-" + order_id, min_version=1, wait_ms=200)
            assert unknown.status_code == 409 and "version" not in unknown.json()
            assert "has no row for it yet" in unknown.json()["detail"] and "Retry-After" in unknown.headers
            assert read(order_id).json()["version"] == 3
            # Out of bounds: 422
            assert read(order_id, min_version=0).status_code == 422
            too_long = read(order_id, min_version=1, wait_ms=120001)
            assert too_long.status_code == 422 and "wait_ms" in too_long.json()["detail"], too_long.text
            assert "120000" in too_long.json()["detail"]
            assert read(order_id, min_version=2**31).status_code == 422
            assert query_cli(order_id, "--min-version", "0").returncode == 2
    finally:
        if worker is not None:
            worker.stop()
        assert tailer.stop(30)
        sink.drop()
        sink.close()
        for name in SERVICE_DATABASES:
            client.drop_database(service_database(s, name))
        client.close()


def test_the_openapi_document_declares_the_wait_bound_and_409_with_retry_after(
    settings: Settings, postgres: object
) -> None:
    app = create_app(settings.model_copy(update={"read_api_max_wait_ms": 5000}), unique("ryo"))
    spec = app.openapi()
    operation = spec["paths"]["/orders/{order_id}"]["get"]
    params = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert params["wait_ms"]["maximum"] == 5000 and params["wait_ms"]["minimum"] == 0
    assert params["min_version"]["anyOf"][0]["minimum"] == 1
    for code in ("409", "503", "504"):
        response = operation["responses"][code]
        assert response["content"]["application/json"]["schema"]["$ref"].endswith("/ApiError")
        assert "Retry-After" in response["headers"]
    assert "version" in spec["components"]["schemas"]["ApiError"]["properties"]


def test_many_waiting_requests_share_one_poll_of_postgres(settings: Settings, postgres: object) -> None:
    """100 requests wait on 100 orders that arrive later: all answered, with a handful of batched queries."""
    ns = unique("rym")
    s = settings.model_copy(update={"sink_namespace": ns, "read_api_max_wait_ms": 30000})
    sink = build_sink("order_view", s, ns)
    assert isinstance(sink, OrderViewSink)
    sink.setup()
    app = create_app(s, ns)
    count = 100
    try:
        with in_thread(app) as url:
            async def run() -> list[httpx.Response]:
                limits = httpx.Limits(max_connections=count + 10)
                async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
                    requests = [http.get(f"/orders/o{i}", params={"min_version": 2, "wait_ms": 20000})
                                for i in range(count)]

                    async def write_later() -> None:
                        await asyncio.sleep(1.0)
                        events = [e for i in range(count) for e in order_lifecycle("orders", f"o{i}", "c", ["p"],
                                                                                   ["paid"])]
                        await asyncio.to_thread(sink.write, events)

                    answers = await asyncio.gather(*requests, write_later())
                    return [a for a in answers if isinstance(a, httpx.Response)]

            started = time.monotonic()
            answers = asyncio.run(run())
            took = time.monotonic() - started
            watch = app.state.order_watch
            assert [a.status_code for a in answers] == [200] * count
            assert {a.json()["status"] for a in answers} == {"paid"}
            print(f"{count} waiting requests: {watch.polls} polls of Postgres in {took:.2f} s")
            # one query per tick for all of them (about 20 in 1-2 s with the tick capped at 200 ms), not per request
            assert watch.polls <= 10 + 10 * took, watch.polls
            assert watch.waiting == 0
    finally:
        sink.drop()
        sink.close()


def test_waiters_over_the_cap_get_503_with_retry_after(settings: Settings, postgres: object) -> None:
    """read_api_max_waiters 2: a third concurrent wait is refused at once (503, Retry-After), the two are answered."""
    ns = unique("ryc")
    s = settings.model_copy(update={"sink_namespace": ns, "read_api_max_waiters": 2})
    sink = build_sink("order_view", s, ns)
    sink.setup()
    app = create_app(s, ns)
    try:
        with in_thread(app) as url:
            async def run() -> list[httpx.Response]:
                async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                    held = [asyncio.create_task(http.get(f"/orders/w{i}", params={"min_version": 1, "wait_ms": 3000}))
                            for i in range(2)]
                    await asyncio.to_thread(wait_for, lambda: app.state.order_watch.waiting == 2, 20, 0.01,
                                            "two waiters")
                    refused = await http.get("/orders/w9", params={"min_version": 1, "wait_ms": 3000})
                    return [refused, *await asyncio.gather(*held)]

            started = time.monotonic()
            refused, *waited = asyncio.run(run())
            assert refused.status_code == 503, refused.text
            assert "too many requests are waiting" in refused.json()["detail"]
            assert int(refused.headers["Retry-After"]) >= 1
            assert [r.status_code for r in waited] == [409, 409]  # no row after 3 s: still behind
            assert time.monotonic() - started < 20
    finally:
        sink.drop()
        sink.close()
