"""The catalogue's decisions, pure: which events bring a stored product to what a seed asks for."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from cdc.errors import InvalidEventError
from cdc.schemas import ProductCreated, ProductUpdated, StockAdjusted
from producers.product import ProductIn, demo_catalogue, seed_changes


def stored(**overrides: Any) -> dict[str, Any]:
    return {"_id": "p-1", "name": "Lamp", "price": "10.00", "stock": 5, "version": 3, **overrides}


def wanted(**overrides: Any) -> ProductIn:
    fields: dict[str, Any] = {"id": "p-1", "name": "Lamp", "price": "10.00", "stock": 5, **overrides}
    return ProductIn.model_validate(fields)


def test_a_new_product_is_created_with_its_whole_state() -> None:
    assert seed_changes(None, wanted(stock=7)) == [
        ProductCreated(product_id="p-1", name="Lamp", price=Decimal("10.00"), stock=7)
    ]


def test_a_product_that_no_event_described_yet_is_created() -> None:
    """Stored at version 0 (before the catalogue had events): its next seed writes its ProductCreated."""
    assert [type(c).__name__ for c in seed_changes(stored(version=0), wanted())] == ["ProductCreated"]
    legacy = {"_id": "p-1", "name": "Lamp", "price": "10.00", "stock": 5}  # no version field at all
    assert [type(c).__name__ for c in seed_changes(legacy, wanted())] == ["ProductCreated"]


def test_a_product_already_as_asked_changes_nothing() -> None:
    assert seed_changes(stored(), wanted()) == []
    assert seed_changes(stored(), wanted(price="10.0")) == []  # the same amount, written differently


def test_stock_set_to_a_new_level_is_adjusted_with_the_signed_change() -> None:
    assert seed_changes(stored(stock=5), wanted(stock=12)) == [
        StockAdjusted(product_id="p-1", change=7, stock_after=12)
    ]
    assert seed_changes(stored(stock=5), wanted(stock=0)) == [
        StockAdjusted(product_id="p-1", change=-5, stock_after=0)
    ]


def test_name_or_price_change_is_an_update_and_both_changes_are_two_events() -> None:
    assert seed_changes(stored(), wanted(name="Desk lamp")) == [
        ProductUpdated(product_id="p-1", name="Desk lamp", price=Decimal("10.00"))
    ]
    assert [type(c).__name__ for c in seed_changes(stored(), wanted(price="12.50", stock=9))] == [
        "ProductUpdated", "StockAdjusted"
    ]


def test_the_demo_catalogue_is_the_same_on_every_call() -> None:
    """So re-seeding the demo changes no name or price, only stock that purchases took."""
    assert demo_catalogue(20) == demo_catalogue(20)


def test_stock_beyond_what_the_stock_view_can_hold_is_refused() -> None:
    with pytest.raises(ValueError, match="stock"):
        wanted(stock=2**31)
    with pytest.raises(InvalidEventError, match="stock"):
        ProductCreated.build(product_id="p-1", name="n", price=Decimal(1), stock=2**31)


def test_a_stock_adjustment_of_zero_is_no_event() -> None:
    with pytest.raises(InvalidEventError, match="change"):
        StockAdjusted.build(product_id="p-1", change=0, stock_after=5)
