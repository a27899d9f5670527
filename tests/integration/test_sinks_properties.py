"""Property tests on the real stores: random order lifecycles, redelivered (at-least-once) and interleaved across
orders (each order's own order kept), cut into random batches → each read model equals the plain fold."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from cdc.event import Event
from cdc.settings import Settings
from sinks.clickstream import ClickstreamSink, page_view_of
from sinks.order_view import OrderViewSink, fold_orders
from sinks.purchase_graph import PurchaseGraphSink
from tests.helpers import unique
from tests.streams_support import expected_graph, order_lifecycle, page_view

pytestmark = pytest.mark.integration

LIFECYCLES = [[], ["paid"], ["paid", "shipped"], ["paid", "shipped", "delivered"], ["cancelled"],
              ["paid", "refunded"], ["paid", "shipped", "refunded", "refunded"], ["paid", "cancelled"]]

PROPERTY = hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                              HealthCheck.too_slow])


def deliveries(data: st.DataObject, per_key: list[list[Event]]) -> list[Event]:
    """At-least-once delivery: each key's events in order, with redelivered runs, interleaved across keys."""
    queues: list[list[Event]] = []
    for events in per_key:
        q: list[Event] = []
        for i, e in enumerate(events):
            q.append(e)
            if data.draw(st.integers(0, 3)) == 0:  # a redelivery of events j..i (a consumer restarted)
                j = data.draw(st.integers(0, i))
                q.extend(events[j:i + 1])
        queues.append(q)
    out: list[Event] = []
    while any(queues):
        live = [q for q in queues if q]
        out.append(live[data.draw(st.integers(0, len(live) - 1))].pop(0))
    return out


def batches(data: st.DataObject, stream: list[Event]) -> list[list[Event]]:
    """Cut into batches of random sizes, as stream.take would."""
    out, i = [], 0
    while i < len(stream):
        n = data.draw(st.integers(1, 12))
        out.append(stream[i:i + n])
        i += n
    return out


def random_orders(data: st.DataObject, tag: str) -> list[list[Event]]:
    kinds = data.draw(st.lists(st.sampled_from(LIFECYCLES), min_size=1, max_size=6))
    return [
        order_lifecycle("orders", f"{tag}-o{i}", f"{tag}-c{i % 3}", [f"{tag}-p{(i + k) % 4}" for k in range(1 + i % 3)],
                        k, refund=data.draw(st.sampled_from(["3.00", "9.99", "60.00"])))
        for i, k in enumerate(kinds)
    ]


@pytest.fixture(scope="module")
def order_view(settings: Settings, postgres: object) -> Iterator[OrderViewSink]:
    sink = OrderViewSink(settings, unique("prop"))
    sink.setup()
    yield sink
    sink.drop()
    sink.close()


@pytest.fixture(scope="module")
def graph(settings: Settings, neo4j: object) -> Iterator[PurchaseGraphSink]:
    sink = PurchaseGraphSink(settings, unique("prop"))
    sink.setup()
    yield sink
    sink.drop()
    sink.close()


@pytest.fixture(scope="module")
def clicks(settings: Settings, cassandra: object) -> Iterator[ClickstreamSink]:
    sink = ClickstreamSink(settings, unique("prop"))
    sink.setup()
    yield sink
    sink.drop()
    sink.close()


@PROPERTY
@given(data=st.data())
def test_order_view_equals_the_fold_of_each_orders_events(order_view: OrderViewSink, data: st.DataObject) -> None:
    per_order = random_orders(data, unique("x"))
    for batch in batches(data, deliveries(data, per_order)):
        order_view.write(batch)
    expected = fold_orders([e for events in per_order for e in events])
    for order_id, row in expected.items():
        assert order_view.get(order_id) == row


@PROPERTY
@given(data=st.data())
def test_purchase_graph_equals_the_fold_of_each_orders_events(graph: PurchaseGraphSink, data: st.DataObject) -> None:
    tag = unique("x")
    per_order = random_orders(data, tag)
    for batch in batches(data, deliveries(data, per_order)):
        graph.write(batch)
    expected = expected_graph(fold_orders([e for events in per_order for e in events]))
    actual = [r for r in graph.snapshot() if r["order_id"].startswith(tag)]
    assert actual == expected


@PROPERTY
@given(data=st.data())
def test_clickstream_holds_each_view_once(clicks: ClickstreamSink, data: st.DataObject) -> None:
    tag = unique("x")
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    n_users = data.draw(st.integers(1, 4))
    per_user = [
        [page_view("clickstream", f"{tag}-u{u}", data.draw(st.sampled_from([None, "p1", "p2", "p3"])),
                   base + timedelta(minutes=data.draw(st.integers(0, 3000)),
                                    milliseconds=data.draw(st.integers(0, 999))))
         for _ in range(data.draw(st.integers(1, 8)))]
        for u in range(n_users)
    ]
    for batch in batches(data, deliveries(data, per_user)):
        clicks.write(batch)
    views = [page_view_of(e) for events in per_user for e in events]
    snap = clicks.snapshot()
    actual = [v for v in snap["views"] if v["user_id"].startswith(tag)]
    assert actual == sorted((v.to_json() for v in views), key=lambda v: (v["ts"], v["event_id"]))
    days = {v.day for v in views}
    for day in days:
        want: dict[str, int] = {}
        for v in views:
            if v.day == day and v.product_id:
                want[v.product_id] = want.get(v.product_id, 0) + 1
        mine = {e.event_id for events in per_user for e in events}
        got = [p for p in snap["product_views"] if p[0] == day.isoformat() and p[2] in mine]
        counts: dict[str, int] = {}
        for p in got:
            counts[p[1]] = counts.get(p[1], 0) + 1
        assert counts == want
