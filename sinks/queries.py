"""The read side: one function per query over the read models, returning plain JSON-ready data.

The CLI (`cdcflow query ...`) and the HTTP read API (`sinks/read_api.py`) are thin shells over these
functions. An unknown order, customer or product raises `NotFound` (with a reason a user can read); a store that
is down raises the sink's `TransientSinkError`.

Clicks are stored by (user, day), so "no clicks" and "unknown user" cannot be told apart without scanning the
table: a user without page views in the window gets an empty list, not `NotFound`.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

from cdc.logs import get_logger
from cdc.settings import Settings
from sinks.base import Sink
from sinks.clickstream import ClickstreamSink
from sinks.order_view import OrderViewSink
from sinks.purchase_graph import PurchaseGraphSink
from sinks.registry import build_sink

log = get_logger(__name__)

#: Longest window a clicks query may span (one Cassandra partition per day).
MAX_CLICK_DAYS = 31
#: Largest `limit` a query accepts.
MAX_LIMIT = 100


class NotFound(LookupError):
    """The order, customer or product is not in the read model."""

    def __init__(self, kind: str, key: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.key = key
        self.reason = reason


class BadQuery(ValueError):
    """A query parameter is out of range (bad window, limit)."""


@dataclass
class ReadModels:
    """The sinks the queries read, created lazily (connections open on first use), closed together."""

    settings: Settings
    namespace: str | None = None
    _sinks: dict[str, Sink] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # the read API's request threads share us

    def _get(self, name: str) -> Sink:
        sink = self._sinks.get(name)
        if sink is not None:
            return sink
        # No setup(): readers run with read-only database users and do no DDL (the workers create the schemas at
        # their start); a read model no worker has written yet reads as empty.
        sink = build_sink(name, self.settings, self.namespace)
        with self._lock:
            kept = self._sinks.setdefault(name, sink)
        if kept is not sink:  # another request thread set it up first
            sink.close()
        return kept

    @property
    def order_view(self) -> OrderViewSink:
        return cast(OrderViewSink, self._get("order_view"))

    @property
    def purchase_graph(self) -> PurchaseGraphSink:
        return cast(PurchaseGraphSink, self._get("purchase_graph"))

    @property
    def clickstream(self) -> ClickstreamSink:
        return cast(ClickstreamSink, self._get("clickstream"))

    def warm_up(self) -> dict[str, str]:
        """Create (and set up) every sink now; returns the ones that failed, with why (they retry later)."""
        failed: dict[str, str] = {}
        for name in ("order_view", "purchase_graph", "clickstream"):
            try:
                self._get(name)
            except Exception as exc:
                failed[name] = str(exc)
                log.warning("read_model_unavailable", read_model=name, error=str(exc)[:300])
        return failed

    def close(self) -> None:
        with self._lock:
            for sink in self._sinks.values():
                with contextlib.suppress(Exception):
                    sink.close()
            self._sinks.clear()

    def __enter__(self) -> ReadModels:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- parameters -------------------------------------------------------------------------------------------


def parse_day(text: str) -> date:
    """A day as YYYY-MM-DD; ValueError with a readable message otherwise."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"bad date {text!r}: expected YYYY-MM-DD") from None


def parse_time(text: str) -> datetime:
    """An ISO-8601 time (or a day, meaning its midnight), UTC when no offset is given."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"bad time {text!r}: expected ISO-8601, e.g. 2026-01-31 or 2026-01-31T12:00:00Z") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def today() -> date:
    """Today in UTC (the clickstream's days are UTC days)."""
    return datetime.now(UTC).date()


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise BadQuery(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")


def click_window(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """Validate a [start, end) clicks window: start before end, at most MAX_CLICK_DAYS days."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if end <= start:
        raise BadQuery(f"'to' ({end.isoformat()}) must be after 'from' ({start.isoformat()})")
    if end - start > timedelta(days=MAX_CLICK_DAYS):
        raise BadQuery(f"the window spans more than {MAX_CLICK_DAYS} days")
    return start, end


# -- queries ----------------------------------------------------------------------------------------------


def order(models: ReadModels, order_id: str) -> dict[str, Any]:
    """The order view row of `order_id`."""
    row = models.order_view.get(order_id)
    if row is None:
        raise NotFound("order", order_id, f"order {order_id!r} is not in the order view")
    return row.to_json()


def recommendations(models: ReadModels, customer_id: str, limit: int = 5) -> dict[str, Any]:
    """What `customer_id` bought and the products others who bought the same also bought."""
    _check_limit(limit)
    graph = models.purchase_graph
    purchases = graph.purchases(customer_id)
    if not purchases:
        raise NotFound("customer", customer_id, f"customer {customer_id!r} has no purchases in the purchase graph")
    bought = sorted({str(p["product_id"]) for p in purchases if p.get("active")})
    recs = graph.recommendations(customer_id, limit=limit)
    return {
        "customer_id": customer_id,
        "purchased": bought,
        "recommendations": [{"product_id": p, "customers": n} for p, n in recs],
    }


def also_bought(models: ReadModels, product_id: str, limit: int = 5) -> dict[str, Any]:
    """Products bought by the customers who bought `product_id`, most shared first."""
    _check_limit(limit)
    graph = models.purchase_graph
    if not graph.has_product(product_id):
        raise NotFound("product", product_id, f"product {product_id!r} has never been purchased")
    rows = graph.also_bought(product_id, limit=limit)
    return {"product_id": product_id, "also_bought": [{"product_id": p, "customers": n} for p, n in rows]}


def clicks(
    models: ReadModels,
    user_id: str,
    day: date | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict[str, Any]:
    """A user's page views on `day` (default today, UTC), or in [start, end); oldest first."""
    if start is not None or end is not None:
        if start is None or end is None or day is not None:
            raise BadQuery("give either a day, or both 'from' and 'to'")
        start, end = click_window(start, end)
        views = models.clickstream.views_between(user_id, start, end)
        window: dict[str, Any] = {"from": start.isoformat(), "to": end.isoformat()}
    else:
        day = day or today()
        views = models.clickstream.views(user_id, day)
        window = {"day": day.isoformat()}
    if not views and not models.clickstream.has_visitor(user_id):
        # A known user on a quiet day gets an empty list; an unknown one is "not found".
        raise NotFound("user", user_id, f"user {user_id!r} has no page views in the clickstream")
    return {"user_id": user_id, **window, "views": [v.to_json() for v in views]}


def top_products(models: ReadModels, day: date | None = None, limit: int = 10) -> dict[str, Any]:
    """The most viewed products of `day` (default today, UTC)."""
    _check_limit(limit)
    day = day or today()
    rows = models.clickstream.top_products(day, limit=limit)
    return {"day": day.isoformat(), "products": [{"product_id": p, "views": n} for p, n in rows]}
