"""The stock view's fold over every inventory event type."""

from __future__ import annotations

from typing import Any

from cdc.event import Event
from sinks.stock_view import StockRow, StockViewSink, apply_stock_event


def ev(event_type: str, version: int, **payload: Any) -> Event:
    return Event.create(topic="inventory", aggregate_type="Product", aggregate_id="p-1", type=event_type,
                        version=version, payload={"product_id": "p-1", **payload})


def fold(events: list[Event], row: StockRow | None = None) -> StockRow | None:
    for e in events:
        row = apply_stock_event(row, e) or row
    return row


CREATED = ev("ProductCreated", 1, name="Lamp", price="9.99", stock=10)


def test_catalogue_and_purchase_events_fold_to_the_products_stock_and_version() -> None:
    row = fold([
        CREATED,
        ev("InventoryDecremented", 2, quantity=3, stock_after=7, order_id="o-1"),
        ev("ProductUpdated", 3, name="Desk lamp", price="12.00"),
        ev("StockAdjusted", 4, change=13, stock_after=20),
        ev("InventoryDecremented", 5, quantity=1, stock_after=19, order_id="o-2"),
    ])
    assert row is not None
    assert (row.stock, row.version, row.units_sold, row.last_order_id) == (19, 5, 4, "o-2")


def test_every_new_event_type_is_handled_by_the_sink() -> None:
    assert {"ProductCreated", "ProductUpdated", "StockAdjusted", "InventoryDecremented",
            "ProductSnapshot"} == StockViewSink.event_types


def test_stale_and_repeated_catalogue_events_change_nothing() -> None:
    row = fold([CREATED, ev("StockAdjusted", 2, change=5, stock_after=15)])
    assert row is not None and row.stock == 15
    for stale in (CREATED, ev("StockAdjusted", 2, change=-10, stock_after=0), ev("ProductUpdated", 1, name="x",
                                                                                  price="1.00")):
        assert apply_stock_event(row, stale) is None


def test_an_update_without_the_products_earlier_events_has_no_stock_to_show() -> None:
    assert apply_stock_event(None, ev("ProductUpdated", 4, name="Lamp", price="9.99")) is None


def test_a_snapshot_is_taken_when_later_or_when_it_repairs_the_same_version() -> None:
    row = fold([CREATED, ev("InventoryDecremented", 2, quantity=2, stock_after=8)])
    assert row is not None
    same = ev("ProductSnapshot", 2, name="Lamp", price="9.99", stock=8)
    assert apply_stock_event(row, same) is None  # already equal: nothing to write
    repaired = apply_stock_event(row, ev("ProductSnapshot", 2, name="Lamp", price="9.99", stock=50))
    assert repaired is not None and (repaired.stock, repaired.version, repaired.units_sold) == (50, 2, 2)
    later = apply_stock_event(row, ev("ProductSnapshot", 9, name="Lamp", price="9.99", stock=3))
    assert later is not None and (later.stock, later.version) == (3, 9)
    assert apply_stock_event(later, ev("ProductSnapshot", 8, name="Lamp", price="9.99", stock=4)) is None
    fresh = apply_stock_event(None, ev("ProductSnapshot", 4, name="Lamp", price="9.99", stock=6))
    assert fresh is not None and (fresh.stock, fresh.version, fresh.units_sold) == (6, 4, 0)
