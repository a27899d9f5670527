"""A sink that is down: the worker waits and retries, commits nothing past an unwritten event, and catches up
when the server returns. Postgres, then Neo4j, then Cassandra, each stopped for ~10 s mid-stream."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cdc.event import Event
from cdc.kafka import ensure_topics
from cdc.settings import Settings
from infra.servers.base import Server
from sinks.clickstream import ClickstreamSink, page_view_of
from sinks.order_view import OrderViewSink, fold_orders
from sinks.purchase_graph import PurchaseGraphSink
from tests.helpers import unique, wait_for
from tests.streams_support import (
    WorkerProcess,
    caught_up,
    committed_offsets,
    end_offsets,
    expected_graph,
    order_lifecycle,
    page_view,
    produce,
)

pytestmark = pytest.mark.integration

PARTITIONS = 2
DOWN_SECONDS = 10.0


def orders(topic: str, first: int, n: int) -> tuple[list[Event], list[Event]]:
    """(phase A, phase B): A creates orders, B moves them on and creates more."""
    lifecycles = [order_lifecycle(topic, f"o{i}", f"c{i % 4}", [f"p{i % 3}", f"p{(i + 1) % 3}"],
                                  ["paid", "shipped"] if i % 3 else ["cancelled"]) for i in range(first, first + n)]
    a = [es[0] for es in lifecycles[: n // 2]]
    b = [e for es in lifecycles[: n // 2] for e in es[1:]] + [e for es in lifecycles[n // 2:] for e in es]
    return a, b


def outage(
    settings: Settings, server: Server, restart_after: list[Server], read_model: str, topic: str, ns: str,
    a: list[Event], b: list[Event], tmp_path: Path, check: Callable[[], None], kill_worker_while_down: bool,
) -> None:
    ensure_topics(settings, [topic], partitions=PARTITIONS)
    group = f"{ns}.g"
    worker = WorkerProcess(read_model, topic, group, ns, tmp_path)
    try:
        produce(settings, topic, a)
        wait_for(lambda: caught_up(settings, group, topic, PARTITIONS), timeout=90, what="phase A applied")
        ends_a = end_offsets(settings, topic, PARTITIONS)

        restart_after.append(server)
        down_at = time.monotonic()
        if server.name == "postgres":
            # SIGTERM is Postgres' "smart" shutdown: it waits (up to infra's 60 s) for every client to leave,
            # our worker included. SIGINT is the "fast" shutdown: connections are cut at once.
            server.process.stop(timeout=30, sig=signal.SIGINT)
        else:
            server.stop()
        produce(settings, topic, b)
        wait_for(lambda: "sink_unavailable" in worker.log_text(), timeout=30, what="worker sees the sink down")
        # Several retries (0.2 + 0.4 + 0.8 s …) span more than one commit interval (1 s) of the worker.
        wait_for(lambda: worker.log_text().count('"sink_retry_scheduled"') >= 4, timeout=60,
                 what="the worker retrying the sink")
        assert worker.alive(), worker.log_text()[-3000:]
        # nothing committed past an unwritten event, for as long as the sink is down: still at the end of phase A
        polls = 0
        while polls < 3 or time.monotonic() - down_at < DOWN_SECONDS / 2:
            assert committed_offsets(settings, group, topic, PARTITIONS) == ends_a
            polls += 1
            time.sleep(0.5)
        if kill_worker_while_down:
            worker.kill()  # a crash now must lose nothing either
        time.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - down_at)))  # the outage's length, not a wait
        server.ensure_running()
        if kill_worker_while_down:
            worker = WorkerProcess(read_model, topic, group, ns, tmp_path, name=f"{read_model}-2")
        wait_for(lambda: caught_up(settings, group, topic, PARTITIONS), timeout=120, what="caught up after outage")
        check()
        assert worker.alive()
    finally:
        worker.stop()
        server.ensure_running()  # before the sink cleanup below, whatever happened (restart_after also does)


def test_postgres_down_then_worker_killed_loses_nothing(
    settings: Settings, kafka: object, postgres: Server, restart_after: list[Server], tmp_path: Path
) -> None:
    ns = unique("pd")
    topic = f"{ns}_orders"
    a, b = orders(topic, 0, 30)
    sink = OrderViewSink(settings, ns)

    def check() -> None:
        folded = fold_orders(a + b)
        assert sink.rows() == [folded[k] for k in sorted(folded)]

    try:
        outage(settings, postgres, restart_after, "order_view", topic, ns, a, b, tmp_path, check, True)
    finally:
        sink.drop()
        sink.close()


def test_neo4j_down_mid_stream(
    settings: Settings, kafka: object, neo4j: Server, restart_after: list[Server], tmp_path: Path
) -> None:
    ns = unique("nd")
    topic = f"{ns}_orders"
    a, b = orders(topic, 0, 30)
    sink = PurchaseGraphSink(settings, ns)

    def check() -> None:
        assert sink.snapshot() == expected_graph(fold_orders(a + b))

    try:
        outage(settings, neo4j, restart_after, "purchase_graph", topic, ns, a, b, tmp_path, check, False)
    finally:
        sink.drop()
        sink.close()


def test_cassandra_down_mid_stream(
    settings: Settings, kafka: object, cassandra: Server, restart_after: list[Server], tmp_path: Path
) -> None:
    ns = unique("cd")
    topic = f"{ns}_clickstream"
    now = datetime.now(UTC).replace(microsecond=0)
    views = [page_view(topic, f"u{i % 5}", f"p{i % 3}", now - timedelta(minutes=11 * i)) for i in range(200)]
    a, b = views[:80], views[80:]
    sink = ClickstreamSink(settings, ns)

    def check() -> None:
        got = sink.snapshot()["views"]
        assert sorted(v["event_id"] for v in got) == sorted(e.event_id for e in views)
        assert got == sorted((page_view_of(e).to_json() for e in views), key=lambda v: (v["ts"], v["event_id"]))

    try:
        outage(settings, cassandra, restart_after, "clickstream", topic, ns, a, b, tmp_path, check, False)
    finally:
        sink.drop()
        sink.close()
