"""Read models seeded for the query, CLI and read-API tests: a namespace of their own in every store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from cdc.schemas import TOPIC_CLICKSTREAM, TOPIC_ORDERS
from cdc.settings import Settings
from sinks.registry import build_sink
from tests.helpers import unique
from tests.streams_support import order_lifecycle, page_view

#: customer -> products bought (one order each)
PURCHASES = {"c1": ["pA", "pB"], "c2": ["pA", "pC"], "c3": ["pB", "pC", "pD"]}


@dataclass(frozen=True)
class Seeded:
    namespace: str
    day: date  # the day with page views (yesterday, UTC: inside the clickstream TTL)
    user: str
    views_on_day: int
    top: list[tuple[str, int]]  # expected top products of `day`


@contextmanager
def seeded_read_models(settings: Settings) -> Iterator[Seeded]:
    """Orders o-c1, o-c2, o-c3 (paid) in order_view and purchase_graph; page views of u1 in clickstream."""
    namespace = unique("uq")
    day = datetime.now(UTC).date() - timedelta(days=1)
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    orders = [
        e
        for customer, products in PURCHASES.items()
        for e in order_lifecycle(TOPIC_ORDERS, f"o-{customer}", customer, products, ["paid"], start=noon)
    ]
    views = [
        page_view(TOPIC_CLICKSTREAM, "u1", "pA", noon),
        page_view(TOPIC_CLICKSTREAM, "u1", "pB", noon + timedelta(minutes=1)),
        page_view(TOPIC_CLICKSTREAM, "u1", "pA", noon + timedelta(minutes=2)),
        page_view(TOPIC_CLICKSTREAM, "u2", "pA", noon + timedelta(minutes=3)),
        page_view(TOPIC_CLICKSTREAM, "u1", "pC", noon + timedelta(days=1, minutes=-1)),  # next day 11:59
    ]
    # Written as the workers write them (their database users own what they create), so that the read-only
    # users of the read API and `cdcflow query` can read them.
    writer = settings.as_role("worker")
    sinks = [build_sink(name, writer, namespace) for name in ("order_view", "purchase_graph", "clickstream")]
    try:
        for sink in sinks:
            sink.setup()
        sinks[0].write(orders)
        sinks[1].write(orders)
        sinks[2].write(views)
        yield Seeded(namespace, day, "u1", views_on_day=3, top=[("pA", 3), ("pB", 1)])
    finally:
        for sink in sinks:
            try:
                sink.drop()
            finally:
                sink.close()
