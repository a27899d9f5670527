"""The pure part of holds: what a batch applies, parks and releases, given the held aggregates."""

from __future__ import annotations

from sinks.holds import plan_holds
from tests.streams_support import order_lifecycle


def ids(events: list) -> list[str]:  # type: ignore[type-arg]
    return [e.event_id for e in events]


def test_nothing_held_applies_everything_in_order() -> None:
    a = order_lifecycle("orders", "a", "c", ["p"], ["paid"])
    plan = plan_holds(a, {})
    assert ids(plan.events({})) == ids(a) and not plan.park and not plan.released


def test_a_held_aggregate_parks_its_events_and_leaves_the_others_alone() -> None:
    a = order_lifecycle("orders", "a", "c", ["p"], ["paid", "shipped", "delivered"])
    b = order_lifecycle("orders", "b", "c", ["p"], ["paid"])
    batch = [a[1], b[0], a[2], b[1], a[3]]
    plan = plan_holds(batch, {"a": a[0].event_id})
    assert ids(plan.park) == ids([a[1], a[2], a[3]])
    assert ids(plan.events({})) == ids(b) and not plan.released


def test_the_held_event_releases_the_parked_ones_right_after_it_then_the_rest_follows() -> None:
    a = order_lifecycle("orders", "a", "c", ["p"], ["paid", "shipped", "delivered", "refunded"])
    stored = [a[1], a[2]]  # parked by earlier batches
    batch = [a[3], a[0], a[4]]  # a[3] arrived before the re-driven a[0]: parked in this very batch
    plan = plan_holds(batch, {"a": a[0].event_id})
    assert plan.released == ["a"] and not plan.park
    assert ids(plan.events({"a": stored})) == ids([a[0], a[1], a[2], a[3], a[4]])


def test_a_duplicate_of_a_parked_event_is_parked_again_not_applied() -> None:
    a = order_lifecycle("orders", "a", "c", ["p"], ["paid"])
    plan = plan_holds([a[1], a[1]], {"a": a[0].event_id})
    assert ids(plan.park) == ids([a[1], a[1]]) and not plan.events({})
