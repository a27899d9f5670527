"""Query parameters and the CLI's table renderings: pure functions, no servers."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from rich.console import Console

from cli.usage import clicks_tables, order_tables, recommendations_tables, top_products_tables
from sinks.queries import BadQuery, click_window, parse_day, parse_time


def render(items: list[object]) -> str:
    console = Console(record=True, width=200)
    for item in items:
        console.print(item)
    return console.export_text()


def test_parse_day() -> None:
    assert parse_day("2026-02-28") == date(2026, 2, 28)
    for bad in ("2026-02-30", "yesterday", "28/02/2026", ""):
        with pytest.raises(ValueError, match="expected YYYY-MM-DD"):
            parse_day(bad)


def test_parse_time_is_utc() -> None:
    assert parse_time("2026-01-01") == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_time("2026-01-01T02:00:00+02:00") == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_time("2026-01-01T00:00:00Z").tzinfo is not None
    with pytest.raises(ValueError, match="expected ISO-8601"):
        parse_time("noon")


def test_click_window_bounds() -> None:
    start = datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    assert click_window(start, start + timedelta(days=31))[0].tzinfo == UTC
    with pytest.raises(BadQuery, match="must be after"):
        click_window(start, start)
    with pytest.raises(BadQuery, match="more than 31 days"):
        click_window(start, start + timedelta(days=31, seconds=1))


def test_order_tables() -> None:
    out = render(order_tables({
        "order_id": "o1", "customer_id": "c1", "status": "shipped", "total": "19.98", "currency": "EUR",
        "version": 3, "carrier": None,
        "items": [{"product_id": "pA", "quantity": 2, "unit_price": "9.99"}],
    }))
    assert "order o1" in out and "shipped" in out and "19.98" in out and "pA" in out
    assert "carrier" not in out  # empty fields are left out


def test_recommendations_tables_explain_an_empty_result() -> None:
    out = render(recommendations_tables({"customer_id": "c9", "purchased": ["pA"], "recommendations": []}))
    assert "purchased: pA" in out and "no recommendations yet" in out


def test_clicks_and_top_products_tables() -> None:
    view = {"ts": "2026-01-01T12:00:00+00:00", "url": "/p/pA", "product_id": "pA", "referrer": None}
    out = render(clicks_tables({"user_id": "u1", "day": "2026-01-01", "views": [view]}))
    assert "page views of u1 (2026-01-01): 1" in out and "/p/pA" in out
    out = render(top_products_tables({"day": "2026-01-01", "products": [{"product_id": "pA", "views": 3}]}))
    assert "top products on 2026-01-01" in out and "pA" in out and "3" in out
