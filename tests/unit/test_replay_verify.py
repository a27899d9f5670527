"""The rebuild verify's judgement (streams/verify.py) on plain entries: which differences are explained."""

from __future__ import annotations

import pytest

from sinks.base import Entry
from streams.verify import (
    LIVE_AHEAD,
    LIVE_BEHIND,
    MISSING_IN_LIVE,
    MISSING_IN_SHADOW,
    VALUE,
    Difference,
    VerifyOrderError,
    collect,
    diff,
    judge,
)


def row(key: str, version: int | None, value: str = "v") -> Entry:
    return Entry((key,), key, version, {"status": value})


def kinds(live: list[Entry], shadow: list[Entry]) -> list[tuple[str, str]]:
    return [(d.kind, d.aggregate) for d in diff(live, shadow) if isinstance(d, Difference)]


def test_equal_models_have_no_difference() -> None:
    rows = [row("a", 1), row("b", 3), row("c", None)]
    equal, differences, overflow = collect(rows, list(rows))
    assert (equal, differences, overflow) == (3, [], False)
    assert judge(equal, differences, later=set(), live_caught_up=True).ok


def test_each_kind_of_difference_is_found_in_key_order() -> None:
    live = [row("a", 1), row("b", 4), row("c", 2), row("d", 2, "bogus"), row("f", 1)]
    shadow = [row("b", 3), row("c", 3), row("d", 2), row("e", 1), row("f", 1)]
    assert kinds(live, shadow) == [(MISSING_IN_SHADOW, "a"), (LIVE_AHEAD, "b"), (LIVE_BEHIND, "c"), (VALUE, "d"),
                                   (MISSING_IN_LIVE, "e")]


def test_live_ahead_is_explained_only_by_later_records_of_its_aggregate() -> None:
    _, differences, _ = collect([row("a", 1), row("b", 4)], [row("b", 3)])
    assert judge(0, differences, later={"a", "b"}, live_caught_up=True).ok
    refused = judge(0, differences, later={"a"}, live_caught_up=True)
    assert not refused.ok and refused.unexplained == 1
    assert refused.examples[0].kind == LIVE_AHEAD and "live at version 4, shadow at version 3" in refused.message()


def test_live_behind_is_explained_only_while_the_live_workers_are_behind() -> None:
    _, differences, _ = collect([row("c", 2)], [row("c", 3), row("e", 1)])
    lagging = judge(0, differences, later={"c", "e"}, live_caught_up=False)
    assert lagging.ok and lagging.explained["live_behind"] == 2
    assert judge(0, differences, later={"c", "e"}, live_caught_up=False).ok
    caught_up = judge(0, differences, later={"c", "e"}, live_caught_up=True)
    assert caught_up.unexplained == 2


def test_a_different_value_at_the_same_version_is_never_explained() -> None:
    _, differences, _ = collect([row("d", 2, "bogus")], [row("d", 2, "paid")])
    verdict = judge(0, differences, later={"d"}, live_caught_up=False)
    assert not verdict.ok
    assert "status live='bogus' shadow='paid'" in verdict.message()


def test_unversioned_rows_that_differ_are_explained_by_later_records_or_lag() -> None:
    _, differences, _ = collect([row("u", None, "new")], [row("u", None, "old")])
    assert judge(0, differences, later={"u"}, live_caught_up=True).ok
    assert judge(0, differences, later=set(), live_caught_up=False).ok
    assert not judge(0, differences, later=set(), live_caught_up=True).ok


def test_entries_out_of_key_order_cannot_be_compared() -> None:
    with pytest.raises(VerifyOrderError, match="live model's rows are not in ascending key order"):
        collect([row("b", 1), row("a", 1)], [row("a", 1), row("b", 1)])


def test_too_many_differences_are_refused_without_judging(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("streams.verify.MAX_KEPT", 3)
    equal, differences, overflow = collect([row(str(i), 1) for i in range(5)], [])
    assert overflow and len(differences) == 3
    verdict = judge(equal, differences, later={str(i) for i in range(5)}, live_caught_up=True, overflow=overflow)
    assert not verdict.ok and "more than 3 differences" in verdict.message()
