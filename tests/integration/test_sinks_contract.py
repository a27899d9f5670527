"""The one contract every sink honours, run against each real store (pyeventsourcing style: subclass per sink).

- setup is idempotent; an empty batch is a no-op;
- a batch written twice, or redelivered in reverse (stale versions), leaves the same read model;
- a batch written at once equals the same events written one at a time;
- `entries()` walks every row once, in ascending key order, the same whatever the page size;
- an unreachable store raises TransientSinkError (retry), never a permanent error (dead letter).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import ClassVar

import pytest

from cdc.event import Event
from cdc.settings import Settings, load_settings
from sinks.base import Sink, TransientSinkError
from sinks.registry import build_sink
from tests.helpers import unique
from tests.streams_support import T0, order_lifecycle, page_view, stock_events

pytestmark = pytest.mark.integration

ORDER_KINDS = [["paid", "shipped", "delivered"], ["cancelled"], ["paid", "refunded"], ["paid", "refunded", "refunded"],
               [], ["paid", "shipped"]]


class SinkContract:
    read_model: ClassVar[str] = ""
    server: ClassVar[str] = ""
    #: settings overrides that point the sink at a port nothing listens on
    unreachable: ClassVar[dict[str, object]] = {}

    def events(self, tag: str) -> list[Event]:
        raise NotImplementedError

    @pytest.fixture
    def make_sink(self, request: pytest.FixtureRequest, settings: Settings) -> Iterator[object]:
        request.getfixturevalue(self.server)
        made: list[Sink] = []

        def make() -> Sink:
            sink = build_sink(self.read_model, settings, unique("ct"))
            sink.setup()
            made.append(sink)
            return sink

        yield make
        for sink in made:
            sink.drop()
            sink.close()

    def test_setup_is_idempotent_and_empty_batch_is_a_noop(self, make_sink: object) -> None:
        sink = make_sink()  # type: ignore[operator]
        sink.setup()
        sink.write([])
        assert not sink.snapshot() or sink.snapshot() == {"views": [], "product_views": []}

    def test_writing_twice_or_stale_redelivery_changes_nothing(self, make_sink: object) -> None:
        sink = make_sink()  # type: ignore[operator]
        events = self.events("a")
        sink.write(events)
        once = sink.snapshot()
        assert once, "the batch wrote nothing"
        sink.write(events)
        assert sink.snapshot() == once
        sink.write(list(reversed(events)))
        assert sink.snapshot() == once
        for e in events[::3]:
            sink.write([e])
        assert sink.snapshot() == once

    def test_batch_equals_one_at_a_time(self, make_sink: object) -> None:
        batched, single = make_sink(), make_sink()  # type: ignore[operator]
        events = self.events("b")
        batched.write(events)
        for e in events:
            single.write([e])
        assert batched.snapshot() == single.snapshot()

    def test_entries_walk_every_row_in_key_order_and_pages_change_nothing(self, make_sink: object) -> None:
        empty = make_sink()  # type: ignore[operator]
        assert list(empty.entries()) == []
        batched, single = make_sink(), make_sink()  # type: ignore[operator]
        events = self.events("d")
        batched.write(events)
        for e in events:
            single.write([e])
        walk = list(batched.entries())
        assert walk and [e.key for e in walk] == sorted({e.key for e in walk})  # ascending, each key once
        assert list(batched.entries(chunk=3)) == walk
        assert list(single.entries(chunk=1)) == walk  # the same events give the same entries, in any pages
        assert {e.aggregate for e in walk} <= {e.aggregate_id for e in events}

    def test_unreachable_store_is_a_transient_error(self, request: pytest.FixtureRequest) -> None:
        sink = build_sink(self.read_model, load_settings(**self.unreachable), unique("ct"))
        with pytest.raises(TransientSinkError):
            sink.setup()
        with pytest.raises(TransientSinkError):
            sink.write(self.events("c")[:2])
        sink.close()


def _orders(tag: str) -> list[Event]:
    events: list[Event] = []
    for i, kinds in enumerate(ORDER_KINDS):
        events += order_lifecycle("orders", f"{tag}-o{i}", f"{tag}-c{i % 3}", [f"p{i % 4}", f"p{(i + 1) % 4}"],
                                  kinds, refund="5.00")
    # interleave orders, keeping each order's own order
    return sorted(events, key=lambda e: (e.version or 0, e.aggregate_id))


class TestOrderViewContract(SinkContract):
    read_model = "order_view"
    server = "postgres"
    unreachable: ClassVar[dict[str, object]] = {"postgres_port": 1}

    def events(self, tag: str) -> list[Event]:
        return _orders(tag)


class TestStockViewContract(SinkContract):
    read_model = "stock_view"
    server = "postgres"
    unreachable: ClassVar[dict[str, object]] = {"postgres_port": 1}

    def events(self, tag: str) -> list[Event]:
        return stock_events("inventory", f"{tag}-p1", 100, [1, 2, 3]) + stock_events("inventory", f"{tag}-p2", 9, [4])


class TestPurchaseGraphContract(SinkContract):
    read_model = "purchase_graph"
    server = "neo4j"
    unreachable: ClassVar[dict[str, object]] = {"neo4j_bolt_port": 1}

    def events(self, tag: str) -> list[Event]:
        return _orders(tag)


class TestClickstreamContract(SinkContract):
    read_model = "clickstream"
    server = "cassandra"
    unreachable: ClassVar[dict[str, object]] = {"cassandra_port": 1}

    def events(self, tag: str) -> list[Event]:
        from datetime import UTC, datetime

        base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=30)
        return [
            page_view("clickstream", f"{tag}-u{i % 3}", f"p{i % 4}" if i % 5 else None, base + timedelta(minutes=7 * i))
            for i in range(40)
        ]


assert T0  # shared epoch of the order fixtures
