"""The read-ahead thread of the tailer: order, markers, errors and back-pressure (a scripted fake stream)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
from pymongo.change_stream import CollectionChangeStream
from pymongo.errors import OperationFailure

from cdc.stream_reader import ChangeReader, Ended, Idle, Item
from tests.helpers import wait_for


class ScriptedStream:
    """Returns its script one step per try_next: a change (dict), None (empty batch), or an exception."""

    def __init__(self, script: list[Any], *, alive_after: bool = True) -> None:
        self.script = list(script)
        self.alive_after = alive_after
        self.calls = 0
        self.closed = threading.Event()
        self.resume_token: dict[str, Any] | None = {"_data": "0"}

    @property
    def alive(self) -> bool:
        return bool(self.script) or self.alive_after

    def try_next(self) -> dict[str, Any] | None:
        self.calls += 1
        if not self.script:
            time.sleep(0.01)
            return None
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        if step is None:
            self.resume_token = {"_data": f"pb{self.calls}"}
            return None
        self.resume_token = step["_id"]
        return cast(dict[str, Any], step)

    def close(self) -> None:
        self.closed.set()


def change(i: int) -> dict[str, Any]:
    return {"_id": {"_data": f"t{i}"}, "operationType": "insert", "fullDocument": {"i": i}}


def reader(stream: ScriptedStream, max_buffered: int = 100) -> ChangeReader:
    return ChangeReader(cast(CollectionChangeStream[dict[str, Any]], stream), max_buffered=max_buffered,
                        name="test-reader").start()


def drain(r: ChangeReader, until: int, timeout: float = 5.0) -> Iterator[Item]:
    deadline = time.monotonic() + timeout
    got = 0
    while got < until:
        assert time.monotonic() < deadline, f"only {got} of {until} items"
        for item in r.take(1000, 0.05):
            got += 1
            yield item


def test_changes_and_idle_markers_keep_stream_order() -> None:
    stream = ScriptedStream([change(1), change(2), None, change(3)])
    r = reader(stream)
    items = list(drain(r, 4))
    r.close()
    assert items[:2] == [change(1), change(2)]
    assert items[2] == Idle({"_data": "pb3"})  # the post-batch token as of the empty batch
    assert items[3] == change(3)
    assert stream.closed.is_set()


def test_server_closing_the_stream_ends_with_ended() -> None:
    stream = ScriptedStream([change(1)], alive_after=False)
    r = reader(stream)
    items = list(drain(r, 3))
    assert items[0] == change(1) and isinstance(items[1], Idle) and isinstance(items[2], Ended)
    r.close()


def test_error_is_raised_after_the_changes_before_it() -> None:
    stream = ScriptedStream([change(1), change(2), OperationFailure("history lost", code=286)])
    r = reader(stream)
    wait_for(lambda: stream.closed.is_set(), timeout=5, what="reader stopped on the error")
    assert r.take(1000, 0.1) == [change(1), change(2)]
    with pytest.raises(OperationFailure, match="history lost"):
        r.take(1000, 0.1)
    r.close()


def test_reads_ahead_at_most_max_buffered() -> None:
    stream = ScriptedStream([change(i) for i in range(50)])
    r = reader(stream, max_buffered=10)
    wait_for(lambda: stream.calls >= 10, timeout=5, what="reader filled its buffer")
    time.sleep(0.2)  # give an unbounded reader the time to overrun
    assert stream.calls == 10
    items = list(drain(r, 50))
    assert items == [change(i) for i in range(50)]
    r.close()


def test_close_stops_the_thread_and_closes_the_stream() -> None:
    stream = ScriptedStream([])
    r = reader(stream)
    r.close(timeout=5)
    assert stream.closed.is_set()
