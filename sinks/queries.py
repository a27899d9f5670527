"""The read side: one function per query over the read models, returning plain JSON-ready data.

The CLI (`cdcflow query ...`) and the HTTP read API (`sinks/read_api.py`) are thin shells over these
functions. An unknown order, customer or product raises `NotFound` (with a reason a user can read); a store that
is down raises the sink's `TransientSinkError`.

Clicks are stored by (user, day), so "no clicks" and "unknown user" cannot be told apart without scanning the
table: a user without page views in the window gets an empty list, not `NotFound`.

Every answer is bounded: `clicks` is paginated (at most `limit` views, MAX_CLICKS_PAGE at most, and a `next`
cursor to pass back as `after` while more remain), `top-products`, `recommendations` and `also-bought` are capped
by `limit` (MAX_LIMIT at most), the products a customer bought by MAX_PURCHASED. Days outside what the
clickstream can hold (older than its retention, or further ahead than a view can be kept) are answered empty
without asking the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, cast

from cdc.logs import get_logger
from cdc.settings import Settings
from sinks.base import Sink
from sinks.clickstream import ClickstreamSink
from sinks.order_view import OrderViewSink
from sinks.purchase_graph import PurchaseGraphSink
from sinks.registry import build_sink
from sinks.waits import VersionWatch

log = get_logger(__name__)

#: Longest window a clicks query may span (one Cassandra partition per day).
MAX_CLICK_DAYS = 31
#: Largest `limit` a query accepts.
MAX_LIMIT = 100
#: Largest page of clicks, and the default one.
MAX_CLICKS_PAGE = 1000
DEFAULT_CLICKS_PAGE = 100
#: Most purchased products a recommendations answer lists.
MAX_PURCHASED = 1000
#: Cassandra keeps a cell at most 20 years: no page view can lie further ahead than that.
MAX_FUTURE_DAYS = 20 * 365
_CURSOR = re.compile(r"^(-?\d{1,16})\.([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")


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
    return as_utc(when)


def as_utc(when: datetime) -> datetime:
    """`when` in UTC (naive means UTC); ValueError when UTC cannot represent it (0001-01-01T00:00+01:00)."""
    try:
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"time {when.isoformat()} is out of range once converted to UTC") from None


def encode_cursor(view_ts: datetime, event_id: str) -> str:
    """The `after` cursor that continues a clicks page after the view (ts, event_id)."""
    return f"{round(view_ts.timestamp() * 1000)}.{event_id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(ts, event_id) of an `after` cursor; BadQuery for anything `encode_cursor` does not make."""
    match = _CURSOR.match(cursor)
    if match is None:
        raise BadQuery(f"bad 'after' cursor {cursor[:100]!r}: pass back the 'next' of the previous page")
    try:
        ts = datetime.fromtimestamp(int(match.group(1)) / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        raise BadQuery("bad 'after' cursor: time out of range") from None
    return ts, match.group(2)


def today() -> date:
    """Today in UTC (the clickstream's days are UTC days)."""
    return datetime.now(UTC).date()


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise BadQuery(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")


def click_window(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """Validate a [start, end) clicks window: start before end, at most MAX_CLICK_DAYS days."""
    try:
        start, end = as_utc(start), as_utc(end)
    except ValueError as exc:
        raise BadQuery(str(exc)) from None
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


class Behind(Exception):
    """Read-your-writes: the order view holds an older version than asked for (`version`: what it holds, None when
    it has no row yet), now (`waited_ms` 0) or still after waiting `waited_ms`."""

    def __init__(self, order_id: str, min_version: int, version: int | None, waited_ms: int) -> None:
        holds = "has no row for it yet" if version is None else f"holds version {version}"
        after = "" if not waited_ms else f" after waiting {waited_ms} ms"
        super().__init__(f"order {order_id!r}: the order view {holds}, not yet version {min_version}{after}")
        self.order_id = order_id
        self.min_version = min_version
        self.version = version
        self.waited_ms = waited_ms


def order_watch(models: ReadModels, max_waiters: int = 1000) -> VersionWatch:
    """The one `VersionWatch` over the order view of `models` (create it once per process, in its event loop)."""
    return VersionWatch(lambda keys: models.order_view.versions(keys), max_waiters=max_waiters)


async def order_at_version(
    models: ReadModels, watch: VersionWatch, order_id: str, min_version: int, wait_ms: int
) -> dict[str, Any]:
    """The order view row of `order_id` once its version is at least `min_version` (read-your-writes).

    wait_ms 0: the row now, else `Behind` (or NotFound when there is no row). wait_ms > 0: waits up to that long
    (one batched poll for every waiting request, see sinks/waits.py), then `Behind` when it did not catch up."""
    row = await asyncio.to_thread(models.order_view.get, order_id)
    if row is not None and row.version >= min_version:
        return row.to_json()
    if wait_ms <= 0:
        if row is None:
            raise NotFound("order", order_id, f"order {order_id!r} is not in the order view")
        raise Behind(order_id, min_version, row.version, 0)
    outcome = await watch.wait(order_id, min_version, wait_ms / 1000)
    if not outcome.reached:
        raise Behind(order_id, min_version, outcome.version, wait_ms)
    row = await asyncio.to_thread(models.order_view.get, order_id)
    if row is None or row.version < min_version:  # a rebuild swapped an older model in meanwhile
        raise Behind(order_id, min_version, None if row is None else row.version, wait_ms)
    return row.to_json()


def recommendations(models: ReadModels, customer_id: str, limit: int = 5) -> dict[str, Any]:
    """What `customer_id` bought (at most MAX_PURCHASED products) and the products others who bought the same
    also bought."""
    _check_limit(limit)
    graph = models.purchase_graph
    bought = graph.purchased_products(customer_id, MAX_PURCHASED + 1)
    if bought is None:
        raise NotFound("customer", customer_id, f"customer {customer_id!r} has no purchases in the purchase graph")
    recs = graph.recommendations(customer_id, limit=limit)
    return {
        "customer_id": customer_id,
        "purchased": bought[:MAX_PURCHASED],
        "purchased_truncated": len(bought) > MAX_PURCHASED,
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


def retained_days(settings: Settings) -> tuple[date, date]:
    """The first and last day on which the clickstream can hold a page view (a day of margin each side)."""
    now = today()
    return now - timedelta(days=settings.clickstream_ttl_days + 1), now + timedelta(days=MAX_FUTURE_DAYS)


def clicks(
    models: ReadModels,
    user_id: str,
    day: date | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    limit: int = DEFAULT_CLICKS_PAGE,
    after: str | None = None,
) -> dict[str, Any]:
    """A user's page views on `day` (default today, UTC), or in [start, end); oldest first, a page of at most
    `limit` of them after the cursor `after`. `next` is the cursor of the following page (None: no more)."""
    if not 1 <= limit <= MAX_CLICKS_PAGE:
        raise BadQuery(f"limit must be between 1 and {MAX_CLICKS_PAGE}, got {limit}")
    cursor = decode_cursor(after) if after is not None else None
    first, last = retained_days(models.settings)
    window: dict[str, Any]
    if start is not None or end is not None:
        if start is None or end is None or day is not None:
            raise BadQuery("give either a day, or both 'from' and 'to'")
        start, end = click_window(start, end)
        window = {"from": start.isoformat(), "to": end.isoformat()}
        # Clamp to what can be stored: a window wholly outside it is empty without asking.
        lo = max(start, datetime.combine(first, time.min, UTC))
        hi = min(end, datetime.combine(last, time.min, UTC))
    else:
        day = day or today()
        window = {"day": day.isoformat()}
        lo = hi = datetime.combine(first, time.min, UTC)
        if first <= day < last:
            lo = datetime.combine(day, time.min, UTC)
            hi = lo + timedelta(days=1)
    views = (
        models.clickstream.views_between(user_id, lo, hi, after=cursor, limit=limit + 1) if lo < hi else []
    )
    page, more = views[:limit], len(views) > limit
    if not page and cursor is None and not models.clickstream.has_visitor(user_id):
        # A known user on a quiet day gets an empty list; an unknown one is "not found".
        raise NotFound("user", user_id, f"user {user_id!r} has no page views in the clickstream")
    return {
        "user_id": user_id,
        **window,
        "views": [v.to_json() for v in page],
        "next": encode_cursor(page[-1].ts, page[-1].event_id) if more else None,
    }


def top_products(models: ReadModels, day: date | None = None, limit: int = 10) -> dict[str, Any]:
    """The most viewed products of `day` (default today, UTC), at most `limit`."""
    _check_limit(limit)
    day = day or today()
    first, last = retained_days(models.settings)
    rows = models.clickstream.top_products(day, limit=limit) if first <= day < last else []
    return {"day": day.isoformat(), "products": [{"product_id": p, "views": n} for p, n in rows]}
