"""Workers on the real servers: every event delivered three times → the same read models as once; a replay of
the topics from offset 0 (a new consumer group) → unchanged."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from cdc.kafka import ensure_topics
from cdc.settings import Settings
from sinks.base import Sink
from sinks.order_view import OrderViewSink, fold_orders
from sinks.registry import build_sink
from tests.helpers import unique, wait_for
from tests.streams_support import (
    WorkerProcess,
    caught_up,
    order_lifecycle,
    page_view,
    produce,
    stock_events,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4
KINDS = [["paid", "shipped", "delivered"], ["cancelled"], ["paid", "refunded"], [], ["paid", "shipped"]]


def snapshots(sinks: dict[str, Sink]) -> dict[str, Any]:
    return {name: sink.snapshot() for name, sink in sinks.items()}


def test_three_deliveries_and_a_replay_from_zero_leave_the_read_models_unchanged(
    settings: Settings, kafka: object, postgres: object, neo4j: object, cassandra: object, tmp_path: Path
) -> None:
    ns = unique("dl")
    topics = {"orders": f"{ns}_orders", "inventory": f"{ns}_inventory", "clickstream": f"{ns}_clickstream"}
    ensure_topics(settings, topics.values(), partitions=PARTITIONS)
    models = {"order_view": "orders", "purchase_graph": "orders", "clickstream": "clickstream",
              "stock_view": "inventory"}
    sinks = {name: build_sink(name, settings, ns) for name in models}

    orders = []
    for i in range(40):
        orders.append(order_lifecycle(topics["orders"], f"o{i}", f"c{i % 7}", [f"p{i % 5}", f"p{(i * 3) % 5}"],
                                      KINDS[i % len(KINDS)], refund="4.00"))
    now = datetime.now(UTC).replace(microsecond=0)
    views = [page_view(topics["clickstream"], f"u{i % 6}", f"p{i % 5}" if i % 4 else None,
                       now - timedelta(minutes=13 * i)) for i in range(120)]
    stock = [stock_events(topics["inventory"], f"p{i}", 100, [1, 2, 3, 1]) for i in range(5)]
    by_topic = {
        "orders": [e for es in orders for e in es],
        "clickstream": views,
        "inventory": [e for es in stock for e in es],
    }
    for t, events in by_topic.items():
        produce(settings, topics[t], events)

    workers = [WorkerProcess(name, topics[t], f"{ns}.{name}", ns, tmp_path) for name, t in models.items()]
    try:
        for name, t in models.items():
            wait_for(partial(caught_up, settings, f"{ns}.{name}", topics[t], PARTITIONS), timeout=120,
                     what=f"{name} caught up")
        once = snapshots(sinks)
        # the order view is exactly the fold; the others are non-empty and checked by their own tests
        assert isinstance(sinks["order_view"], OrderViewSink)
        folded = fold_orders(by_topic["orders"])
        assert sinks["order_view"].rows() == [folded[k] for k in sorted(folded)]
        assert len(once["purchase_graph"]) == sum(len({p for p, _, _ in r.items}) for r in folded.values())
        assert len(once["clickstream"]["views"]) == len(views)
        assert [r["stock"] for r in once["stock_view"]] == [93] * 5

        # deliveries two and three: shuffled across aggregates, each aggregate's order kept
        rng = random.Random(7)
        for t, events in by_topic.items():
            again = events * 2
            rng.shuffle(again)
            produce(settings, topics[t], sorted(again, key=lambda e: (e.version or 0)))
        for name, t in models.items():
            wait_for(partial(caught_up, settings, f"{ns}.{name}", topics[t], PARTITIONS), timeout=120,
                     what=f"{name} caught up on the duplicates")
        assert snapshots(sinks) == once
    finally:
        for w in workers:
            w.stop()

    # replay: new consumer groups, from offset 0 of every topic, into the same read models
    replayers = [WorkerProcess(name, topics[t], f"{ns}.{name}.replay", ns, tmp_path, name=f"{name}-replay")
                 for name, t in models.items()]
    try:
        for name, t in models.items():
            wait_for(partial(caught_up, settings, f"{ns}.{name}.replay", topics[t], PARTITIONS),
                     timeout=120, what=f"{name} replayed")
        assert snapshots(sinks) == once
        for w in replayers:
            assert w.alive(), w.log_text()[-2000:]
    finally:
        for w in replayers:
            w.stop()
        for sink in sinks.values():
            sink.drop()
            sink.close()
