"""The tailer's side of the change-stream fetcher: frames over a pipe, replies turned into items in order,
and the fetcher's errors raised again as the driver's (pure logic: a scripted reply source, an os.pipe)."""

from __future__ import annotations

import os
import threading
from typing import Any

import bson
import pytest
from bson.codec_options import CodecOptions
from pymongo.errors import AutoReconnect, OperationFailure

from cdc import frames
from cdc.fetcher import _error_frame
from cdc.stream_reader import Batch, ChangeReader, Ended, FetcherError, Idle, _batch, _raise_error

CODEC: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True)


def change(i: int) -> dict[str, Any]:
    return {"_id": {"_data": f"t{i}"}, "operationType": "insert", "fullDocument": {"i": i}}


class ScriptedSource:
    """Hands out its script one reply per next_batch: a Batch, Ended, None (nothing yet) or an exception."""

    def __init__(self, script: list[Any]) -> None:
        self.script = list(script)
        self.calls = 0

    def next_batch(self, timeout: float) -> Batch | Ended | None:
        self.calls += 1
        if not self.script:
            return None
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step  # type: ignore[no-any-return]


def ids(items: list[Any]) -> list[Any]:
    return [i["_id"]["_data"] if isinstance(i, dict) else i for i in items]


def test_changes_and_idle_markers_keep_stream_order() -> None:
    r = ChangeReader(ScriptedSource([Batch([change(1), change(2)], {"_data": "pb1"}), Batch([], {"_data": "pb2"}),
                                     Batch([change(3)], {"_data": "pb3"}), Ended()]))
    assert ids(r.take(1000, 0)) == ["t1", "t2"]
    assert r.take(1000, 0) == [Idle({"_data": "pb2"})]  # an empty batch: its post-batch token
    assert ids(r.take(1000, 0)) == ["t3"]
    assert r.take(1000, 0) == [Ended()]


def test_take_splits_a_batch_at_the_limit_without_fetching_more() -> None:
    source = ScriptedSource([Batch([change(i) for i in range(5)], None), Batch([change(5)], None)])
    r = ChangeReader(source)
    assert ids(r.take(2, 0)) == ["t0", "t1"]
    assert ids(r.take(2, 0)) == ["t2", "t3"]
    assert ids(r.take(2, 0)) == ["t4"]
    assert source.calls == 1  # the rest of a batch is handed out before the next reply is read
    assert ids(r.take(2, 0)) == ["t5"]


def test_nothing_yet_is_an_empty_list_and_errors_surface_in_order() -> None:
    r = ChangeReader(ScriptedSource([None, Batch([change(1)], None), OperationFailure("history lost", code=286)]))
    assert r.take(1000, 0) == []
    assert ids(r.take(1000, 0)) == ["t1"]
    with pytest.raises(OperationFailure, match="history lost") as info:
        r.take(1000, 0)
    assert info.value.code == 286


def test_a_reply_becomes_a_batch_with_its_post_batch_token() -> None:
    first = bson.encode({"cursor": {"id": bson.Int64(7), "firstBatch": [], "postBatchResumeToken": {"_data": "a"}},
                         "ok": 1.0})
    batch = _batch(first, CODEC)
    assert batch.changes == [] and batch.token == {"_data": "a"}
    more = bson.encode({"cursor": {"id": bson.Int64(7), "nextBatch": [{"_id": {"_data": "t1"}}]}, "ok": 1.0})
    batch = _batch(more, CODEC)
    assert ids(batch.changes) == ["t1"] and batch.token is None


def test_fetcher_errors_come_back_as_the_drivers() -> None:
    failure = OperationFailure("Resume of change stream was not possible", 286,
                               {"ok": 0.0, "errmsg": "Resume of change stream was not possible", "code": 286,
                                "errorLabels": ["NonResumableChangeStreamError"]})
    with pytest.raises(OperationFailure) as info:
        _raise_error(_error_frame(failure))
    assert info.value.code == 286
    assert info.value.has_error_label("NonResumableChangeStreamError")
    with pytest.raises(AutoReconnect, match="connection refused"):
        _raise_error(_error_frame(AutoReconnect("127.0.0.1:1: connection refused")))
    with pytest.raises(FetcherError, match="ValueError: bad"):
        _raise_error(_error_frame(ValueError("bad")))


def test_frames_cross_a_pipe_whole_and_reading_times_out() -> None:
    read_fd, write_fd = os.pipe()
    try:
        assert frames.read_frame(read_fd, timeout=0.05) is None
        big = os.urandom(3 * 65536 + 17)  # larger than a default pipe: the reader must loop

        def write() -> None:
            frames.write_frame(write_fd, frames.BATCH, big)
            frames.write_frame(write_fd, frames.CLOSED)

        writer = threading.Thread(target=write)
        writer.start()
        assert frames.read_frame(read_fd, timeout=5) == (frames.BATCH, big)
        assert frames.read_frame(read_fd, timeout=5) == (frames.CLOSED, b"")
        writer.join(5)
    finally:
        os.close(write_fd)
    with pytest.raises(frames.PipeClosed):
        frames.read_frame(read_fd, timeout=1)
    os.close(read_fd)


def test_writing_to_a_closed_pipe_is_pipe_closed() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    with pytest.raises(frames.PipeClosed):
        frames.write_frame(write_fd, frames.BATCH, b"x")
    os.close(write_fd)
