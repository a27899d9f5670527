"""The status verdict, lag arithmetic and rendering: pure functions, no servers."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from rich.console import Console

from cli.status import (
    DeadLetterStatus,
    LagStatus,
    OutboxStatus,
    Status,
    Thresholds,
    format_age,
    lag_of,
    render_lines,
    verdict,
)
from cli.usage import status_tables

T = Thresholds(max_lag=100, max_backlog=10, max_backlog_age_seconds=60.0, stale_checkpoint_seconds=30.0)


def healthy_outbox(**kw: object) -> OutboxStatus:
    base: dict[str, object] = {"service": "order", "database": "order_service", "backlog": 0,
                               "leader": "h:1", "lease_live": True, "checkpoint_age_seconds": 2.0}
    base.update(kw)
    return OutboxStatus(**base)  # type: ignore[arg-type]


def lag(n: int | None, error: str | None = None) -> LagStatus:
    return LagStatus("order_view", "cdcflow.order_view", "orders", lag=n, committed=True, error=error)


def test_all_healthy_is_ok_with_no_warnings() -> None:
    assert verdict([healthy_outbox()], [lag(0)], [DeadLetterStatus("orders.dlq")], T) == ([], [])


@pytest.mark.parametrize(
    ("outbox", "lags", "expected"),
    [
        (healthy_outbox(backlog=11), [lag(0)], "11 events not yet on Kafka (max 10)"),
        (healthy_outbox(backlog=1, oldest_age_seconds=61.0), [lag(0)], "oldest event not yet on Kafka is 1m01s old"),
        (healthy_outbox(), [lag(101)], "lag 101 on orders (max 100)"),
        (healthy_outbox(error="connection refused"), [lag(0)], "cannot read it: connection refused"),
        (healthy_outbox(), [lag(None, error="timed out")], "cannot read lag of cdcflow.order_view: timed out"),
    ],
)
def test_over_a_threshold_or_unreadable_is_a_problem(outbox: OutboxStatus, lags: list[LagStatus],
                                                     expected: str) -> None:
    problems, _ = verdict([outbox], lags, [], T)
    assert len(problems) == 1 and expected in problems[0], problems


def test_exactly_at_the_threshold_is_still_ok() -> None:
    problems, _ = verdict([healthy_outbox(backlog=10, oldest_age_seconds=60.0)], [lag(100)], [], T)
    assert problems == []


def test_tailer_and_dead_letters_are_warnings_not_problems() -> None:
    problems, warnings = verdict(
        [healthy_outbox(lease_live=False), healthy_outbox(database="b", checkpoint_age_seconds=31.0)],
        [], [DeadLetterStatus("orders.dlq", total=5, unreplayed=3)], T,
    )
    assert problems == []
    assert warnings == [
        "outbox order_service: no live tailer lease (is `cdcflow tail` running?)",
        "outbox b: checkpoint is 31s old",
        "orders.dlq: 3 dead letters not replayed (`cdcflow dlq list`)",
    ]


def test_lag_is_high_watermark_minus_committed_or_low_watermark() -> None:
    marks = {0: (0, 10), 1: (5, 8), 2: (20, 30)}
    # partition 0 committed 7; 1 never committed (everything retained is lag); 2 committed below retention.
    assert lag_of(marks, {0: 7, 2: 3}) == {0: 3, 1: 3, 2: 10}
    assert lag_of(marks, {0: 10, 1: 8, 2: 30}) == {0: 0, 1: 0, 2: 0}


@pytest.mark.parametrize(("seconds", "text"),
                         [(0, "0s"), (59.9, "59s"), (61, "1m01s"), (3600, "1h00m"), (90061, "1d1h")])
def test_format_age(seconds: float, text: str) -> None:
    assert format_age(seconds) == text


def _status(problems: list[str]) -> Status:
    return Status(
        outboxes=[healthy_outbox(backlog=3, oldest_age_seconds=5.0), healthy_outbox(service="x", error="down")],
        read_models=[LagStatus("order_view", "g", "orders", lag=7, partitions={0: 3, 1: 4}, committed=True)],
        dead_letters=[DeadLetterStatus("orders.dlq", total=2, unreplayed=1)],
        thresholds=T, problems=problems, warnings=["w"], gathered_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_json_is_plain_and_carries_the_verdict() -> None:
    data = json.loads(json.dumps(_status(["p"]).to_json()))
    assert data["ok"] is False and data["problems"] == ["p"]
    assert data["read_models"][0]["partitions"] == {"0": 3, "1": 4}
    assert data["outboxes"][0]["backlog"] == 3
    assert data["gathered_at"] == "2026-01-01T00:00:00+00:00"


def test_renderings_show_every_part() -> None:
    text = "\n".join(render_lines(_status([])))
    assert "outbox order_service: backlog 3 oldest 5s leader h:1 checkpoint 2s" in text
    assert "outbox order_service: ERROR down" in text
    assert "lag 7" in text and "orders.dlq: 2 dead letters, 1 not replayed" in text
    assert text.endswith("status: OK")

    console = Console(record=True, width=200)
    for item in status_tables(_status(["too much lag"]).to_json()):
        console.print(item)
    out = console.export_text()
    assert "outboxes and tailer" in out and "read models" in out and "dead letters" in out
    assert "PROBLEM too much lag" in out and "status: FAILING" in out
