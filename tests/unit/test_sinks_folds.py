"""The pure folds and mappings of the sinks: no servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from cdc.errors import InvalidEventError
from cdc.event import Event
from sinks.base import check_namespace
from sinks.clickstream import page_view_of, ttl_seconds
from sinks.order_view import apply_order_event, fold_orders
from sinks.purchase_graph import graph_row
from sinks.registry import READ_MODELS, build_sink, read_model
from sinks.stock_view import apply_stock_event
from tests.streams_support import order_lifecycle, page_view, stock_events


def test_order_lifecycle_folds_to_the_last_state() -> None:
    events = order_lifecycle("orders", "o1", "c1", ["a", "b"], ["paid", "shipped", "delivered"])
    row = fold_orders(events)["o1"]
    assert row.status == "delivered"
    assert row.version == 4
    assert row.customer_id == "c1"
    assert row.carrier == "DHL" and row.tracking_number == "TR-o1"
    assert row.total == Decimal("29.97")  # a x1 + b x2 at 9.99
    assert row.paid_amount == row.total
    assert [p for p, _, _ in row.items] == ["a", "b"]
    assert row.created_at == events[0].occurred_at and row.updated_at == events[-1].occurred_at


def test_stale_and_duplicate_versions_change_nothing() -> None:
    events = order_lifecycle("orders", "o1", "c1", ["a"], ["paid", "cancelled"])
    row = fold_orders(events)["o1"]
    for old in events:
        assert apply_order_event(row, old) is None
    # redelivered out of order with new ids: still stale by version
    again = [e.model_copy(update={"event_id": "00000000-0000-4000-8000-000000000001"}) for e in events[:1]]
    assert apply_order_event(row, again[0]) is None
    assert row.status == "cancelled" and row.cancel_reason == "changed mind"


def test_refunds_accumulate_partial_then_full() -> None:
    events = order_lifecycle("orders", "o1", "c1", ["a"], ["paid", "refunded", "refunded"], refund="5.00")
    rows = fold_orders(events[:3])
    assert rows["o1"].status == "partially_refunded" and rows["o1"].refunded_amount == Decimal("5.00")
    rows = fold_orders(events)
    assert rows["o1"].status == "refunded" and rows["o1"].refunded_amount == Decimal("10.00")


def test_unversioned_event_applies_and_keeps_the_version() -> None:
    events = order_lifecycle("orders", "o1", "c1", ["a"], ["paid"])
    refund = Event.create(topic="orders", aggregate_type="Order", aggregate_id="o1", type="OrderRefunded",
                          payload={"order_id": "o1", "amount": "1.00"})
    row = fold_orders([*events, refund, refund])["o1"]  # the duplicate (same id) is skipped by the fold
    assert row.refunded_amount == Decimal("1.00") and row.version == 2


def test_non_order_event_is_invalid_for_the_order_fold() -> None:
    (inv,) = stock_events("inventory", "p1", 10, [1])
    with pytest.raises(InvalidEventError):
        apply_order_event(None, inv)


def test_stock_fold_takes_stock_after_and_sums_units() -> None:
    events = stock_events("inventory", "p1", 10, [2, 3])
    row = None
    for e in events:
        row = apply_stock_event(row, e) or row
    assert row is not None and row.stock == 5 and row.units_sold == 5 and row.version == 2
    assert apply_stock_event(row, events[0]) is None


def test_page_view_and_ttl_follow_event_time() -> None:
    at = datetime(2026, 3, 1, 23, 59, 59, 123456, tzinfo=UTC)
    view = page_view_of(page_view("clickstream", "u1", "p1", at))
    assert view.day.isoformat() == "2026-03-01" and view.ts.microsecond == 123000
    now = at + timedelta(days=1)
    assert ttl_seconds(view.ts, 90, now) == pytest.approx(89 * 86400, abs=1)
    assert ttl_seconds(view.ts, 1, now + timedelta(seconds=5)) <= 0


def test_graph_rows_merge_repeated_products_of_an_order() -> None:
    (created,) = order_lifecycle("orders", "o1", "c1", ["a", "a", "b"], [])
    kind, row = graph_row(created)
    assert kind == "created"
    assert sorted((i["product_id"], i["quantity"]) for i in row["items"]) == [("a", 3), ("b", 3)]


def test_namespaces_are_plain_identifiers() -> None:
    assert check_namespace("t_abc123") == "t_abc123"
    for bad in ("", "Upper", "1x", "a-b", "x; drop", "a" * 60):
        with pytest.raises(ValueError):
            check_namespace(bad)


def test_registry_maps_read_models_to_topics_and_sinks(settings_stub: object) -> None:
    assert {n: rm.topic for n, rm in READ_MODELS.items()} == {
        "order_view": "orders", "purchase_graph": "orders", "clickstream": "clickstream",
        "stock_view": "inventory",
    }
    assert read_model("order_view").consumer_group() == "cdcflow.order_view"
    with pytest.raises(KeyError):
        read_model("nope")
    for name in READ_MODELS:
        sink = build_sink(name, settings_stub, "shadow_x")  # type: ignore[arg-type]
        assert sink.name == name and sink.namespace == "shadow_x"


@pytest.fixture
def settings_stub() -> object:
    from cdc.settings import load_settings

    return load_settings()
