"""Pure logic of the tailer: done-prefix tracking, backoff, reset parsing, the `tail` command's prompt."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
import typer
from bson.timestamp import Timestamp
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

import cli.tail as tail_cli
from cdc.acks import InFlight, Sent
from cdc.retry import Backoff
from cdc.settings import load_settings
from cdc.tailer import PIPELINE, Reset, timestamp_of
from cli.tail import parse_iso_time


def _entries(n: int) -> list[Sent]:
    return [Sent(f"e{i}", {"_data": f"{i:04d}"}, None) for i in range(n)]


def test_checkpoint_never_passes_an_unacknowledged_event() -> None:
    inflight = InFlight()
    entries = _entries(6)
    for e in entries:
        inflight.add(e)
    inflight.ack(entries[0], 1.0)
    inflight.ack(entries[2], 1.0)  # out of order (another partition)
    assert [e.event_id for e in inflight.take_done_prefix()] == ["e0"]
    assert inflight.take_done_prefix() == []
    inflight.ack(entries[1], 1.0)
    assert [e.event_id for e in inflight.take_done_prefix()] == ["e1", "e2"]
    # A refused event holds the prefix until it is recorded as a dead letter.
    inflight.refuse(entries[3], "too large", 2.0)
    inflight.ack(entries[4], 2.0)
    assert inflight.take_done_prefix() == [] and list(inflight.refusals) == [entries[3]]
    entries[3].dead_lettered = True
    assert [e.event_id for e in inflight.take_done_prefix()] == ["e3", "e4"]
    inflight.fail("broker gone")
    assert inflight.failed == "broker gone"
    assert inflight.take_done_prefix() == [] and len(inflight) == 1


@given(st.permutations(list(range(30))), st.integers(min_value=0, max_value=30))
def test_done_prefix_is_exactly_the_contiguous_acknowledged_run(order: list[int], acked: int) -> None:
    inflight = InFlight()
    entries = _entries(30)
    for e in entries:
        inflight.add(e)
    done = set(order[:acked])
    for i in order[:acked]:
        inflight.ack(entries[i], 0.0)
    taken = [int(e.event_id[1:]) for e in inflight.take_done_prefix()]
    expected = 0
    while expected in done:
        expected += 1
    assert taken == list(range(expected))


def test_pipeline_filters_inserts_and_stream_ends_on_the_server() -> None:
    ops = PIPELINE[0]["$match"]["operationType"]["$in"]
    assert "insert" in ops and "update" not in ops and "invalidate" in ops and "drop" in ops


def test_iso_times_and_cluster_timestamps() -> None:
    assert parse_iso_time("2026-01-02T03:04:05Z") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_iso_time("2026-01-02T03:04:05") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_iso_time("2026-01-02T05:04:05+02:00") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with pytest.raises(typer.BadParameter):
        parse_iso_time("yesterday")
    when = datetime(2026, 1, 2, 3, 4, 5, 900000, tzinfo=UTC)
    assert timestamp_of(when) == Timestamp(int(when.timestamp()), 0)


def test_backoff_doubles_to_a_cap_with_jitter_and_starts_over_after_reset() -> None:
    b = Backoff(0.2, 1.0)
    delays = [b.next() for _ in range(6)]
    for delay, base in zip(delays, [0.2, 0.4, 0.8, 1.0, 1.0, 1.0], strict=True):
        assert base <= delay <= base + 0.2 + 1e-9
    b.reset()
    assert 0.2 <= b.next() <= 0.4


class _FakeTailer:
    created: ClassVar[list[dict[str, Any]]] = []
    exit_code: ClassVar[int] = 0

    def __init__(self, settings: Any, databases: list[str], *, reset: Reset | None = None) -> None:
        _FakeTailer.created.append({"databases": databases, "reset": reset})

    def request_stop(self) -> None:
        pass

    def run(self) -> int:
        return _FakeTailer.exit_code


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    monkeypatch.setattr(tail_cli, "Tailer", _FakeTailer)
    _FakeTailer.created = []
    _FakeTailer.exit_code = 0
    app = typer.Typer()

    @app.callback()
    def root(ctx: typer.Context) -> None:
        ctx.obj = load_settings()

    tail_cli.register(app)
    return app


def test_reset_asks_for_confirmation(app: typer.Typer) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["tail", "--reset", "-d", "x"], input="n\n")
    assert result.exit_code == 1 and "Continue?" in result.output and _FakeTailer.created == []
    result = runner.invoke(app, ["tail", "--reset", "--from", "2026-01-02T03:04:05Z", "-d", "x"], input="y\n")
    assert result.exit_code == 0, result.output
    assert _FakeTailer.created[-1]["reset"] == Reset(Timestamp(1767323045, 0),
                                                      datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    result = runner.invoke(app, ["tail", "--reset", "--yes", "-d", "x"])
    assert result.exit_code == 0 and _FakeTailer.created[-1]["reset"] == Reset(None)


def test_from_needs_reset(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, ["tail", "--from", "2026-01-02T03:04:05Z"])
    assert result.exit_code != 0 and _FakeTailer.created == []


def test_tail_exits_with_the_tailer_s_code(app: typer.Typer) -> None:
    """A tailer that stopped because a thread died (or not within its bound) makes `cdcflow tail` exit 1."""
    assert CliRunner().invoke(app, ["tail", "-d", "x"]).exit_code == 0
    _FakeTailer.exit_code = 1
    assert CliRunner().invoke(app, ["tail", "-d", "x"]).exit_code == 1
