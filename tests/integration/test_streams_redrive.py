"""A dead-lettered event re-driven after later versions of its aggregate were consumed still takes effect: the
later versions are held back (parked in the read model's store) until it is applied, then follow it. For
every versioned read model (order_view, stock_view, purchase_graph), across worker restarts and rebuilds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from functools import partial
from pathlib import Path

import pytest

from cdc.connect import neo4j_driver, postgres_connect
from cdc.event import Event
from cdc.kafka import ensure_topics
from cdc.schemas import OrderCreated, OrderItem, dlq_topic, payload_json
from cdc.settings import Settings
from sinks.order_view import OrderViewSink, fold_orders
from sinks.purchase_graph import PurchaseGraphSink
from sinks.stock_view import StockRow, StockViewSink, apply_stock_event
from streams.dlq import list_dead_letters, replay_dead_letters
from streams.replay import replay
from tests.helpers import unique, wait_for
from tests.streams_support import (
    REPO,
    WorkerProcess,
    caught_up,
    expected_graph,
    order_lifecycle,
    produce,
    stock_events,
)

pytestmark = pytest.mark.integration

PARTITIONS = 2


def fold_stock(events: list[Event]) -> StockRow | None:
    row = None
    for event in events:
        row = apply_stock_event(row, event) or row
    return row


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    # CDCFLOW_ROLE=admin: the commands read the namespaces the test (admin) made, as the test's workers do.
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "CDCFLOW_LOG_LEVEL": "WARNING", "CDCFLOW_ROLE": "admin"})


def test_events_refused_by_the_store_then_fixed_take_effect_when_re_driven_after_later_versions(
    settings: Settings, kafka: object, postgres: object, neo4j: object, tmp_path: Path
) -> None:
    ns = unique("rd")
    orders_topic, inventory_topic = f"{ns}_orders", f"{ns}_inventory"
    for topic in (orders_topic, inventory_topic):
        ensure_topics(settings, [topic, dlq_topic(topic)], partitions=PARTITIONS)
    held = order_lifecycle(orders_topic, "o1", "c-blocked", ["pa", "pb"], ["paid", "shipped", "delivered",
                                                                           "refunded"])
    later = order_lifecycle(orders_topic, "o1", "c-blocked", ["pa", "pb"], ["paid", "shipped", "delivered",
                                                                            "refunded", "refunded"])[5]
    others = [order_lifecycle(orders_topic, f"o{i}", f"c{i}", ["pa", "pc"], ["paid", "shipped"])
              for i in range(2, 6)]
    stock = stock_events(inventory_topic, "p1", 100, [23, 1, 2, 3, 4])
    other_stock = stock_events(inventory_topic, "p2", 50, [1, 2, 3])
    orders, graph, stocks = OrderViewSink(settings, ns), PurchaseGraphSink(settings, ns), StockViewSink(settings, ns)
    for sink in (orders, graph, stocks):
        sink.setup()
    # What the stores refuse until an operator fixes it: a check constraint on each Postgres table, and in the
    # graph a purchase of the same (order, product) by someone else (the relationship key is unique).
    with postgres_connect(settings) as conn:
        conn.execute(f"ALTER TABLE {ns}.order_view ADD CONSTRAINT blocked CHECK (customer_id <> 'c-blocked')")
        conn.execute(f"ALTER TABLE {ns}.stock_view ADD CONSTRAINT blocked CHECK (product_id <> 'p1')")
    driver = neo4j_driver(settings)
    with driver.session() as session:
        session.run(f"CREATE (:{ns}__Customer {{customer_id: 'squatter'}})-[:{ns}__PURCHASED "
                    f"{{order_id: 'o1', product_id: 'pa'}}]->(:{ns}__Product {{product_id: 'pa'}})").consume()

    def start(name: str) -> list[WorkerProcess]:
        return [WorkerProcess(rm, topic, f"{ns}.{rm}", ns, tmp_path, name=f"{rm}-{name}")
                for rm, topic in (("order_view", orders_topic), ("purchase_graph", orders_topic),
                                  ("stock_view", inventory_topic))]

    def all_caught_up() -> bool:
        return all(caught_up(settings, f"{ns}.{w.read_model}", t, PARTITIONS)
                   for w, t in zip(workers, (orders_topic, orders_topic, inventory_topic), strict=True))

    workers = start("1")
    try:
        produce(settings, orders_topic, [held[0]] + [es[0] for es in others])
        produce(settings, inventory_topic, stock[:1] + other_stock[:1])
        produce(settings, orders_topic, held[1:] + [e for es in others for e in es[1:]])
        produce(settings, inventory_topic, stock[1:] + other_stock[1:])
        wait_for(all_caught_up, timeout=120, what="all caught up")
        # v1 dead-lettered, v2..v5 held back (parked), everything else applied
        assert orders.get("o1") is None
        assert [(h["aggregate_id"], h["event_id"], h["parked"]) for h in orders.holds()] == [
            ("o1", held[0].event_id, 4)]
        assert [(h["aggregate_id"], h["parked"]) for h in graph.holds()] == [("o1", 4)]
        assert [(h["aggregate_id"], h["parked"]) for h in stocks.holds()] == [("p1", 4)]
        assert stocks.get("p1") is None and stocks.get("p2") == fold_stock(other_stock)
        reasons = {(x.read_model, x.event_id): x.reason for x in list_dead_letters(settings, [orders_topic,
                                                                                                inventory_topic])}
        assert set(reasons) == {("order_view", held[0].event_id), ("purchase_graph", held[0].event_id),
                                ("stock_view", stock[0].event_id)}
        assert "CheckViolation" in reasons[("order_view", held[0].event_id)]
        assert "ConstraintValidationFailed" in reasons[("purchase_graph", held[0].event_id)]

        # kill -9 every worker; the holds are in the stores: a later version after the restart waits too
        for w in workers:
            w.kill()
        workers = start("2")
        produce(settings, orders_topic, [later])
        wait_for(all_caught_up, timeout=120, what="caught up after the restart")
        assert orders.get("o1") is None and [h["parked"] for h in orders.holds()] == [5]
        assert [h["parked"] for h in graph.holds()] == [5]
        out = cli("dlq", "holds", "--namespace", ns, "--read-model", "order_view", "--read-model", "purchase_graph",
                  "--read-model", "stock_view", "--json")
        assert out.returncode == 0, out.stderr
        assert sorted((h["read_model"], h["aggregate_id"], h["parked"]) for h in json.loads(out.stdout)) == [
            ("order_view", "o1", 5), ("purchase_graph", "o1", 5), ("stock_view", "p1", 4)]
        # `cdcflow replay` of the live namespace meanwhile changes nothing (v1 is refused again, still held)
        report = replay(settings, "order_view", topic=orders_topic, namespace=ns)
        assert report.dead == 1 and orders.get("o1") is None and [h["parked"] for h in orders.holds()] == [5]

        # the operator fixes the stores, then re-drives the dead letters
        with postgres_connect(settings) as conn:
            conn.execute(f"ALTER TABLE {ns}.order_view DROP CONSTRAINT blocked")
            conn.execute(f"ALTER TABLE {ns}.stock_view DROP CONSTRAINT blocked")
        with driver.session() as session:
            session.run(f"MATCH (c:{ns}__Customer {{customer_id: 'squatter'}}) DETACH DELETE c").consume()
        out = cli("dlq", "replay", "--topic", orders_topic, "--topic", inventory_topic)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"{dlq_topic(orders_topic)}: 1 replayed, 2 duplicate(s) skipped" in out.stdout, out.stdout
        assert f"{dlq_topic(inventory_topic)}: 1 replayed" in out.stdout, out.stdout

        all_orders = held + [later] + [e for es in others for e in es]
        folded = fold_orders(all_orders)
        wait_for(lambda: orders.get("o1") == folded["o1"], timeout=90, what="o1 = the fold of v1..v6")
        assert folded["o1"].status == "partially_refunded" and folded["o1"].version == 6
        assert folded["o1"].refunded_amount == Decimal("2.00") and folded["o1"].customer_id == "c-blocked"
        assert orders.rows() == [folded[k] for k in sorted(folded)]
        wait_for(lambda: graph.snapshot() == expected_graph(folded), timeout=90, what="graph = the fold")
        wait_for(lambda: stocks.get("p1") == fold_stock(stock), timeout=90, what="p1 = the fold of v1..v5")
        assert stocks.get("p1") == StockRow("p1", 67, 33, 5, "o5", stock[-1].occurred_at, stock[-1].event_id)
        assert not orders.holds() and not graph.holds() and not stocks.holds()
        wait_for(all_caught_up, timeout=60, what="re-driven events committed")
        assert all(w.alive() for w in workers)
    finally:
        for w in workers:
            w.stop()
        driver.close()
        for sink in (orders, graph, stocks):
            sink.drop()
            sink.close()


def test_a_record_too_large_for_the_worker_re_driven_after_the_limit_is_raised_across_restart_and_rebuild(
    settings: Settings, kafka: object, postgres: object, neo4j: object, tmp_path: Path
) -> None:
    ns = unique("rl")
    topic = f"{ns}_orders"
    ensure_topics(settings, [topic, dlq_topic(topic)], partitions=PARTITIONS)
    limit = 2048
    big = OrderCreated(order_id="o1", customer_id="c1", total=Decimal("200.00"),
                       items=[OrderItem(product_id=f"product-{i:02d}-{'x' * 60}", quantity=1,
                                        unit_price=Decimal("10.00")) for i in range(20)])
    first = Event.create(topic=topic, aggregate_type="Order", aggregate_id="o1", type="OrderCreated",
                         payload=payload_json(big), version=1)
    held = [first, *order_lifecycle(topic, "o1", "c1", ["x"], ["paid", "shipped", "delivered", "cancelled"])[1:]]
    others = [order_lifecycle(topic, f"o{i}", f"c{i}", ["pa"], ["paid"]) for i in range(2, 5)]
    assert len(first.to_json()) > limit and all(len(e.to_json()) < limit for e in held[1:])
    small = {"CDCFLOW_STREAM_MAX_RECORD_BYTES": str(limit)}
    orders, graph = OrderViewSink(settings, ns), PurchaseGraphSink(settings, ns)

    def start(env: dict[str, str], name: str) -> list[WorkerProcess]:
        return [WorkerProcess(rm, topic, f"{ns}.{rm}", ns, tmp_path, env=env, name=f"{rm}-{name}")
                for rm in ("order_view", "purchase_graph")]

    def all_caught_up() -> bool:
        return all(caught_up(settings, f"{ns}.{rm}", topic, PARTITIONS) for rm in ("order_view", "purchase_graph"))

    workers = start(small, "small")
    try:
        produce(settings, topic, held[:1] + [es[0] for es in others])
        produce(settings, topic, held[1:] + [e for es in others for e in es[1:]])
        wait_for(all_caught_up, timeout=120, what="caught up")
        for w in workers:
            w.stop()
        assert orders.get("o1") is None and [h["parked"] for h in orders.holds()] == [4]
        assert [h["parked"] for h in graph.holds()] == [4]
        assert all("record too large" in x.reason for x in list_dead_letters(settings, [topic]))

        # a rebuild with the same limit refuses v1 again: its shadow holds o1 back, and the swap keeps the holds
        small_settings = settings.model_copy(update={"stream_max_record_bytes": limit})
        for rm in ("order_view", "purchase_graph"):
            report = replay(small_settings, rm, topic=topic, namespace=ns, rebuild=True)
            assert report.dead == 1, report.to_json()
        assert orders.get("o1") is None and [h["parked"] for h in orders.holds()] == [4]
        assert [h["parked"] for h in graph.holds()] == [4]

        # the fix: workers restarted with the default limit; then the dead letters are re-driven
        workers = start({}, "default")
        redriven = replay_dead_letters(settings, [topic])
        assert redriven.replayed == {dlq_topic(topic): 1}
        assert redriven.skipped_duplicates == {dlq_topic(topic): 3}
        folded = fold_orders(held + [e for es in others for e in es])
        wait_for(lambda: orders.rows() == [folded[k] for k in sorted(folded)], timeout=90, what="order view")
        assert folded["o1"].status == "cancelled" and len(folded["o1"].items) == 20
        wait_for(lambda: graph.snapshot() == expected_graph(folded), timeout=90, what="graph")
        assert not orders.holds() and not graph.holds()
    finally:
        for w in workers:
            w.stop()
        for sink in (orders, graph):
            sink.drop()
            sink.close()


def test_kill_dash_nine_mid_release_loses_nothing(settings: Settings, kafka: object, postgres: object,
                                                  tmp_path: Path) -> None:
    """Parking and release are in the write's transaction: a worker killed around them redoes the batch."""
    ns = unique("rk")
    topic, group = f"{ns}_orders", f"{ns}.order_view"
    ensure_topics(settings, [topic, dlq_topic(topic)], partitions=PARTITIONS)
    sink = OrderViewSink(settings, ns)
    sink.setup()
    lifecycles = [order_lifecycle(topic, f"o{i}", "c-blocked", ["p"], ["paid", "shipped"]) for i in range(40)]
    with postgres_connect(settings) as conn:
        conn.execute(f"ALTER TABLE {ns}.order_view ADD CONSTRAINT blocked CHECK (customer_id <> 'c-blocked')")
    worker = WorkerProcess("order_view", topic, group, ns, tmp_path)
    try:
        produce(settings, topic, [es[0] for es in lifecycles])
        produce(settings, topic, [e for es in lifecycles for e in es[1:]])
        wait_for(partial(caught_up, settings, group, topic, PARTITIONS), timeout=120, what="all held")
        assert len(sink.holds()) == 40 and {h["parked"] for h in sink.holds()} == {2}
        with postgres_connect(settings) as conn:
            conn.execute(f"ALTER TABLE {ns}.order_view DROP CONSTRAINT blocked")
        replay_dead_letters(settings, [topic])
        wait_for(lambda: len(sink.holds()) < 40, timeout=60, interval=0.01, what="releases under way")
        worker.kill()
        worker = WorkerProcess("order_view", topic, group, ns, tmp_path, name="order_view-2")
        folded = fold_orders([e for es in lifecycles for e in es])
        wait_for(lambda: sink.rows() == [folded[k] for k in sorted(folded)], timeout=120, what="every order")
        assert not sink.holds()
    finally:
        worker.stop()
        sink.drop()
        sink.close()
