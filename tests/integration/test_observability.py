"""Two deployments side by side on one broker (topic and group prefixes), and what operators look at: the
workers' metrics and /healthz, Kafka Connect's headers on dead letters, `cdcflow trace` across every hop.

Each deployment has its own Kafka prefix, databases and namespace, an in-process tailer and an order_view
worker process configured only by its environment (CDCFLOW_KAFKA_TOPIC_PREFIX), as `cdcflow worker` runs it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pymongo import MongoClient
from typer.testing import CliRunner

from cdc import tracing
from cdc.event import Event, utcnow
from cdc.mongo import mongo_client
from cdc.partitioner import partition_for
from cdc.settings import Settings
from cli.main import app
from cli.status import LagTarget, default_lag_targets, lag_status
from cli.trace import trace_event
from producers import order
from sinks.base import TransientSinkError
from sinks.order_view import OrderViewSink
from streams.dlq import list_dead_letters, replay_dead_letters
from streams.replay import replay
from tests.helpers import free_port, unique, wait_for
from tests.observability_support import (
    REPO,
    Deployment,
    console_spans,
    deploy,
    exporter_up,
    failing_health,
    headers_of,
    healthz,
    read_topic,
    sample,
    scrape,
    spawn_worker,
    stop,
    undeploy,
)
from tests.streams_support import order_lifecycle

pytestmark = pytest.mark.integration

Document = dict[str, Any]


@pytest.fixture(scope="module")
def mongo_module(settings: Settings, mongo: object) -> Iterator[MongoClient[Document]]:
    client = mongo_client(settings)
    yield client
    client.close()


@pytest.fixture(scope="module")
def deployments(settings: Settings, mongo_module: MongoClient[Document], kafka: object, postgres: object,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, Deployment]]:
    log_dir = tmp_path_factory.mktemp("deployments")
    a = deploy(settings, mongo_module, log_dir)
    b = deploy(settings, mongo_module, log_dir)
    try:
        yield a, b
    finally:
        undeploy(a, mongo_module)
        undeploy(b, mongo_module)


def _orders(n: int, *kinds: str) -> list[Event]:
    return [e for _ in range(n) for e in order_lifecycle("orders", unique("o"), "c1", ["p1", "p2"], list(kinds),
                                                           start=utcnow())]


def _applied(d: Deployment, events: list[Event]) -> bool:
    last = {e.aggregate_id: e.version for e in events}
    try:
        rows = {k: d.sink.get(k) for k in last}
    except TransientSinkError:  # the worker has not created its tables yet
        return False
    return all(r is not None and r.version == last[k] for k, r in rows.items())


def _applied_version(d: Deployment, aggregate_id: str) -> int | None:
    try:
        row = d.sink.get(aggregate_id)
    except TransientSinkError:  # the worker has not created its tables yet
        return None
    return None if row is None else row.version


def _record(d: Deployment, topic: str, event_id: str, header: str = "event_id") -> Any:
    """The first record of `topic` whose `header` is `event_id` (None if none yet)."""
    return next((m for m in read_topic(d.settings, topic) if headers_of(m).get(header) == event_id.encode()), None)


def _nul_order() -> Event:
    """A valid event the order view refuses for its data (Postgres text takes no NUL): a dead letter."""
    return Event.create(topic="orders", aggregate_type="Order", aggregate_id=unique("nul"), type="OrderCreated",
                        version=1, payload={"order_id": "x", "customer_id": "c\x00d", "total": "9.99",
                                            "currency": "EUR",
                                            "items": [{"product_id": "p", "quantity": 1, "unit_price": "9.99"}]})


def test_two_deployments_share_one_broker_by_their_prefixes(
    deployments: tuple[Deployment, Deployment], mongo_module: MongoClient[Document]
) -> None:
    a, b = deployments
    ea, eb = _orders(3, "paid"), _orders(2, "paid", "shipped")
    a.writer(mongo_module).write(ea)
    b.writer(mongo_module).write(eb)
    wait_for(lambda: _applied(a, ea) and _applied(b, eb), timeout=120, what="both read models current")
    assert all(a.sink.get(e.aggregate_id) is None for e in eb)
    assert all(b.sink.get(e.aggregate_id) is None for e in ea)

    # Records go to the deployment's own topic; the event's `topic` field stays the logical name.
    on_a = read_topic(a.settings, a.orders_topic)
    ids_a = {headers_of(m)["event_id"].decode() for m in on_a}
    assert {e.event_id for e in ea} <= ids_a and not ids_a & {e.event_id for e in eb}
    assert {json.loads(m.value())["topic"] for m in on_a} == {"orders"}
    assert a.orders_topic == f"{a.prefix}.orders" and b.orders_topic == f"{b.prefix}.orders"

    # Each deployment's consumer group is its own, and its status reads that group on that topic.
    for d in (a, b):
        target = next(t for t in default_lag_targets(d.settings) if t.read_model == "order_view")
        assert (target.group, target.topic) == (f"{d.prefix}.cdcflow.order_view", d.orders_topic)
        def caught_up(d: Deployment = d, target: LagTarget = target) -> bool:
            return lag_status(d.settings, target, 10).lag == 0

        wait_for(caught_up, timeout=60, what=f"no lag in {d.prefix}")
        assert lag_status(d.settings, target, 10).committed

    # A replay reads the deployment's topic, under a group of its own prefix.
    ns = unique("rpl")
    replayed = replay(a.settings, "order_view", None, namespace=ns)
    copy = OrderViewSink(a.settings, ns)
    try:
        assert replayed.topic == a.orders_topic and replayed.group_id.startswith(f"{a.prefix}.cdcflow.replay.")
        assert all(copy.get(e.aggregate_id) == a.sink.get(e.aggregate_id) is not None for e in ea)
        assert all(copy.get(e.aggregate_id) is None for e in eb)
    finally:
        copy.drop()
        copy.close()

    # A dead letter of A lands on A's `.dlq` topic only; A's re-drive re-sends it to A's topic only.
    bad = _nul_order()
    a.writer(mongo_module).write([bad])
    wait_for(lambda: any(x.event_id == bad.event_id for x in list_dead_letters(a.settings, ["orders"])),
             timeout=90, what="A's dead letter")
    assert not any(x.event_id == bad.event_id for x in list_dead_letters(b.settings, ["orders"]))
    before_b = len(read_topic(b.settings, b.orders_topic))
    report = replay_dead_letters(a.settings, ["orders"])
    assert report.replayed == {f"{a.prefix}.orders.dlq": 1}
    assert len(read_topic(b.settings, b.orders_topic)) == before_b
    assert sum(headers_of(m)["event_id"].decode() == bad.event_id for m in read_topic(a.settings, a.orders_topic)) == 2


def test_dead_letters_carry_kafka_connect_headers(
    deployments: tuple[Deployment, Deployment], mongo_module: MongoClient[Document]
) -> None:
    a, _ = deployments
    bad = _nul_order()
    a.writer(mongo_module).write([bad])
    dlq = f"{a.orders_topic}.dlq"

    msg = wait_for(lambda: _record(a, dlq, bad.event_id, "dlq_event_id"), timeout=90, what="the dead letter")
    h = headers_of(msg)
    source = _record(a, a.orders_topic, bad.event_id)
    assert h["__connect.errors.topic"] == a.orders_topic.encode()
    assert h["__connect.errors.partition"] == str(source.partition()).encode()
    assert h["__connect.errors.offset"] == str(source.offset()).encode()
    assert h["__connect.errors.stage"] == b"TASK_PUT"  # the store refused its data
    assert h["__connect.errors.connector.name"] == b"order_view"
    assert h["__connect.errors.exception.class.name"].startswith(b"sinks.base.")
    assert b"NUL" in h["__connect.errors.exception.message"]
    # The original record travels unchanged: its value, key and headers.
    assert msg.value() == source.value() and msg.key() == source.key()
    assert h["event_id"] == bad.event_id.encode() and h["type"] == b"OrderCreated"
    # Listing and re-driving do not take the context headers for the record's own.
    stored = next(x for x in list_dead_letters(a.settings, ["orders"]) if x.event_id == bad.event_id)
    assert not any(k.startswith("__connect.errors.") or k.startswith("dlq_") for k, _ in stored.headers)


def test_worker_exports_its_metrics_and_health(
    deployments: tuple[Deployment, Deployment], mongo_module: MongoClient[Document]
) -> None:
    a, _ = deployments
    wait_for(lambda: exporter_up(a.metrics_port), timeout=60, what="the worker's exporter")
    before = scrape(a.metrics_port)
    events = _orders(4, "paid", "shipped")
    a.writer(mongo_module).write(events)
    wait_for(lambda: _applied(a, events), timeout=90, what="applied")

    def counted() -> dict[Any, float] | None:
        now = scrape(a.metrics_port)
        applied = sample(now, "cdcflow_events_total", stage="applied", source="order_view") or 0
        return now if applied - (sample(before, "cdcflow_events_total", stage="applied", source="order_view")
                                 or 0) >= len(events) else None

    now = wait_for(counted, timeout=30, what="applied counted")
    consumed = sample(now, "cdcflow_events_total", stage="consumed", source="order_view")
    assert consumed is not None and consumed >= len(events)
    assert (sample(now, "cdcflow_worker_batch_size_count", read_model="order_view") or 0) >= 1
    assert (sample(now, "cdcflow_worker_batch_size_sum", read_model="order_view") or 0) >= len(events)
    assert (sample(now, "cdcflow_sink_write_seconds_count", read_model="order_view") or 0) >= 1
    assert sample(now, "cdcflow_sink_wait_seconds", read_model="order_view") == 0
    assert sample(now, "cdcflow_events_total", stage="dead_lettered", source="order_view") is not None
    # Lag per assigned partition, measured every few seconds: 0 once caught up.
    wait_for(lambda: [v for (n, _), v in scrape(a.metrics_port).items() if n == "cdcflow_worker_lag"], timeout=30,
             what="lag measured")
    wait_for(lambda: all(v == 0 for (n, _), v in scrape(a.metrics_port).items() if n == "cdcflow_worker_lag"),
             timeout=30, what="lag 0")
    # Set after each batch to its age, back to 0 by the measurement that finds nothing left.
    assert sample(now, "cdcflow_worker_lag_seconds", read_model="order_view") is not None
    wait_for(lambda: sample(scrape(a.metrics_port), "cdcflow_worker_lag_seconds", read_model="order_view") == 0,
             timeout=30, what="lag seconds 0")
    assert healthz(a.metrics_port) == (200, {"status": "ok"})


def test_trace_follows_an_event_across_the_hops(
    deployments: tuple[Deployment, Deployment], mongo_module: MongoClient[Document]
) -> None:
    a, _ = deployments
    events = _orders(1, "paid", "shipped")
    bad = _nul_order()
    a.writer(mongo_module).write([*events, bad])
    wait_for(lambda: _applied(a, events), timeout=90, what="applied")
    wait_for(lambda: any(x.event_id == bad.event_id for x in list_dead_letters(a.settings, ["orders"])),
             timeout=90, what="the dead letter")
    paid = events[1]
    on_kafka = _record(a, a.orders_topic, paid.event_id)
    assert on_kafka.partition() == partition_for(paid.aggregate_id.encode(), 4)

    def traced() -> Any:
        report = trace_event(a.settings, paid.event_id)
        return report if report.outboxes and report.outboxes[0].get("on_kafka") else None

    report = wait_for(traced, timeout=30, what="the checkpoint past the event")
    data = report.to_json()
    assert data["found"] and data["source"] == f"outbox {a.database}.outbox" and not data["errors"]
    assert data["event"]["type"] == "PaymentConfirmed" and data["event"]["version"] == 2
    kafka = data["kafka"]
    assert (kafka["topic"], kafka["partition"], kafka["offset"]) == (a.orders_topic, on_kafka.partition(),
                                                                     on_kafka.offset())
    assert kafka["expected_partition"] == on_kafka.partition() and len(kafka["scanned"]) == 1
    # Both read models of `orders` are looked into; this deployment runs only the order view.
    models = {r["read_model"]: r for r in data["read_models"]}
    assert set(models) == {"order_view", "purchase_graph"} and models["purchase_graph"]["applied"] is not True
    view = models["order_view"]
    assert view["applied"] is True and view["version"] == 3
    assert view["row"]["status"] == "shipped" and view["held"] is None and data["dead_letters"] == []

    # The refused one: on Kafka, dead-lettered by the worker, not applied, its order held back.
    bad_report = trace_event(a.settings, bad.event_id).to_json()
    assert bad_report["kafka"]["found"]
    view = next(r for r in bad_report["read_models"] if r["read_model"] == "order_view")
    assert view["applied"] is False and view["held"]["event_id"] == bad.event_id
    assert [d["read_model"] for d in bad_report["dead_letters"]] == ["order_view"]
    assert "NUL" in bad_report["dead_letters"][0]["reason"]

    # Pruned from the outbox: without hints only the read model's trace is gone; with them Kafka finds it.
    mongo_module[a.database]["outbox"].delete_one({"_id": paid.event_id})
    assert trace_event(a.settings, paid.event_id).event is None
    hinted = trace_event(a.settings, paid.event_id, topic="orders", key=paid.aggregate_id,
                         since=paid.occurred_at).to_json()
    assert hinted["source"] == "kafka" and hinted["kafka"]["offset"] == on_kafka.offset()
    assert next(r for r in hinted["read_models"] if r["read_model"] == "order_view")["applied"] is True

    # The command: --json, exit 0 when found, 1 when found nowhere, 2 for a bad id.
    runner = CliRunner()
    env = {"CDCFLOW_KAFKA_TOPIC_PREFIX": a.settings.kafka_topic_prefix, "CDCFLOW_SERVICE_DB_PREFIX": f"{a.prefix}_",
           "CDCFLOW_TAILER_DATABASES": json.dumps([a.database]), "CDCFLOW_SINK_NAMESPACE": a.prefix,
           "CDCFLOW_TAILER_STATE_DATABASE": a.settings.tailer_state_database}
    shown = runner.invoke(app, ["trace", bad.event_id, "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["kafka"]["offset"] == bad_report["kafka"]["offset"]
    table = runner.invoke(app, ["trace", events[0].event_id], env=env)
    assert table.exit_code == 0 and "applied" in table.stdout and a.orders_topic in table.stdout, table.output
    nowhere = runner.invoke(app, ["trace", "00000000-0000-4000-8000-000000000000"], env=env)
    assert nowhere.exit_code == 1 and "not in any outbox" in nowhere.stdout
    assert runner.invoke(app, ["trace", "not-a-uuid"], env=env).exit_code == 2


def test_tracing_is_off_by_default_no_traceparent_travels(
    deployments: tuple[Deployment, Deployment], mongo_module: MongoClient[Document], tmp_path: Path
) -> None:
    a, _ = deployments
    events = _orders(1)
    a.writer(mongo_module).write(events)
    doc = mongo_module[a.database]["outbox"].find_one({"_id": events[0].event_id})
    assert doc is not None and "traceparent" not in doc["headers"]
    msg = wait_for(lambda: _record(a, a.orders_topic, events[0].event_id), timeout=60, what="on Kafka")
    assert "traceparent" not in headers_of(msg)


def _span_tree(spans: list[Any]) -> dict[str, Any]:
    return {s.name: s for s in spans}


def test_one_request_is_one_trace_across_service_tailer_and_worker(
    settings: Settings, mongo_module: MongoClient[Document], kafka: object, postgres: object, tmp_path: Path
) -> None:
    """The order service (in process), the tailer (in process) and the worker (a process, console exporter):
    its request span, the outbox write, the tailer's PRODUCER span and the worker's CONSUMER span are one trace,
    each the child of the one before; a caller's traceparent is continued, not replaced."""
    memory = InMemorySpanExporter()
    tracing.install(memory, service="cdcflow-test")
    d = deploy(settings, mongo_module, tmp_path, CDCFLOW_TRACING_EXPORTER="console")
    try:
        with TestClient(order.create_app(d.settings)) as http:
            oid = unique("o")
            created = http.post("/orders", json={"order_id": oid, "customer_id": "c1", "items": [
                {"product_id": "p1", "quantity": 1, "unit_price": "5.00"}]})
            assert created.status_code == 201, created.text
            caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
            paid = http.post(f"/orders/{oid}/pay", headers={"traceparent": f"00-{caller_trace}-{caller_span}-01"})
            assert paid.status_code == 200, paid.text
        outbox = {doc["type"]: doc for doc in mongo_module[d.database]["outbox"].find({"aggregate_id": oid})}
        assert set(outbox) == {"OrderCreated", "PaymentConfirmed"}

        ids = {doc["_id"] for doc in outbox.values()}

        def published() -> list[Any] | None:
            # At least once: a tailer that re-sends (a catch-up scan at its start) makes another PRODUCER span.
            spans = [s for s in memory.get_finished_spans() if s.kind == SpanKind.PRODUCER
                     and s.attributes and s.attributes.get("messaging.message.id") in ids]
            return spans if {(s.attributes or {}).get("messaging.message.id") for s in spans} == ids else None

        wait_for(published, timeout=60, what="the tailer's PRODUCER spans of both events")
        wait_for(lambda: _applied_version(d, oid) == 2, timeout=90, what="applied by the worker")

        def consumed() -> list[dict[str, Any]] | None:
            spans = [s for s in console_spans(d.log_text()) if s["kind"] == "SpanKind.CONSUMER"]
            return spans if len(spans) >= 2 else None

        worker_spans = wait_for(consumed, timeout=30, what="the worker's CONSUMER spans")
        records: dict[str, list[Any]] = {}
        for m in read_topic(d.settings, d.orders_topic):
            records.setdefault(headers_of(m)["event_id"].decode(), []).append(m)

        for event_type, caller in (("OrderCreated", None), ("PaymentConfirmed", caller_trace)):
            doc = outbox[event_type]
            spans = [s for s in memory.get_finished_spans()
                     if s.context is not None and format(s.context.trace_id, "032x") == doc["headers"]["trace_id"]]
            servers = [s for s in spans if s.kind == SpanKind.SERVER]
            writes = [s for s in spans if s.kind == SpanKind.INTERNAL]
            publishes = [s for s in spans if s.kind == SpanKind.PRODUCER]
            # one request, one write; each (re-)send of its event a PRODUCER span; nothing else in the trace
            assert len(servers) == 1 and len(writes) == 1 and publishes, spans
            assert len(spans) == 2 + len(publishes), spans
            server, write = servers[0], writes[0]
            trace_id = format(server.context.trace_id, "032x")
            # The caller's trace is continued; without one, the request starts it.
            if caller is None:
                assert server.parent is None
            else:
                assert trace_id == caller and server.parent is not None
                assert format(server.parent.span_id, "016x") == caller_span
            assert server.name in {"POST /orders", "POST /orders/{order_id}/pay"}
            assert server.attributes is not None and server.attributes["http.response.status_code"] in {200, 201}
            assert write.name == "outbox write" and write.parent is not None
            assert write.parent.span_id == server.context.span_id
            assert all(p.parent is not None and p.parent.span_id == write.context.span_id for p in publishes)
            # The outbox document carries the write's context; each Kafka record of it the span that sent it.
            # (The flags are the span's: sampled, and the SDK's random-trace-id bit.)
            assert doc["headers"]["traceparent"][:-2] == f"00-{trace_id}-{write.context.span_id:016x}-"
            sent = {f"00-{trace_id}-{p.context.span_id:016x}-".encode() for p in publishes}
            assert records[doc["_id"]] and all(headers_of(r)["traceparent"][:-2] in sent
                                               for r in records[doc["_id"]])
            consumer = [s for s in worker_spans if s["context"]["trace_id"] == f"0x{trace_id}"]
            assert consumer, worker_spans
            offsets = {r.offset() for r in records[doc["_id"]]}
            for span in consumer:
                assert span["parent_id"] in {f"0x{p.context.span_id:016x}" for p in publishes}
                assert span["attributes"]["cdcflow.read_model"] == "order_view"
                assert span["attributes"]["messaging.kafka.offset"] in offsets
                assert span["status"]["status_code"] == "UNSET"
    finally:
        tracing.reset()
        undeploy(d, mongo_module)


def test_worker_healthz_fails_while_its_sink_is_waited_on_too_long(
    deployments: tuple[Deployment, Deployment], mongo_module: MongoClient[Document], tmp_path: Path
) -> None:
    """A worker whose Postgres cannot be reached retries (nothing lost, nothing skipped) and says so: /healthz
    503 once the wait is over `worker_health_max_sink_wait_seconds`, the wait and the retries in its metrics."""
    a, _ = deployments
    a.writer(mongo_module).write(_orders(1))
    port, group_prefix = free_port(), unique("grp") + "."
    worker = spawn_worker(a.settings, "order_view", tmp_path / "worker.log", {
        "CDCFLOW_KAFKA_TOPIC_PREFIX": a.settings.kafka_topic_prefix, "CDCFLOW_KAFKA_GROUP_PREFIX": group_prefix,
        "CDCFLOW_SINK_NAMESPACE": unique("nowhere"), "CDCFLOW_POSTGRES_PORT": str(free_port()),
        "CDCFLOW_WORKER_METRICS_PORT": str(port), "CDCFLOW_WORKER_HEALTH_MAX_SINK_WAIT_SECONDS": "2",
    })
    try:
        wait_for(lambda: exporter_up(port), timeout=60, what="the worker's exporter")
        body = failing_health(port, 60)
        assert body["status"] == "failing" and len(body["reasons"]) == 1, body
        assert "sink of order_view waited on for" in body["reasons"][0] and "unavailable" in body["reasons"][0]
        now = scrape(port)
        assert (sample(now, "cdcflow_sink_wait_seconds", read_model="order_view") or 0) > 2
        assert sample(now, "cdcflow_sink_waiting", read_model="order_view", cause="unavailable") == 1
        assert (sample(now, "cdcflow_sink_retries_total", read_model="order_view") or 0) >= 1
        assert (sample(now, "cdcflow_events_total", stage="applied", source="order_view") or 0) == 0
        assert worker.poll() is None  # it waits, it does not die
    finally:
        stop(worker)
        shutil.rmtree(REPO / f"{group_prefix}cdcflow.order_view-data", ignore_errors=True)
