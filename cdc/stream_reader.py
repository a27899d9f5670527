"""Reads a change stream through the tailer's fetcher process (`cdc.fetcher`).

`Fetcher` owns the process (started on first use, started again if it died) and opens one stream at a time
on it; `RemoteStream` hands out the stream's replies in order; `ChangeReader` turns them into what the
tailer forwards: changes (decoded with the outbox's codec options), `Idle` markers (an empty
batch, with the post-batch resume token that covers every change before it), and finally `Ended` (the server
closed the stream). A failure is raised in the caller's thread as the error the driver would have raised
there (`OperationFailure` with the server's code, `AutoReconnect`, ...), so resume logic stays the same.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import bson
from bson.codec_options import CodecOptions
from bson.timestamp import Timestamp
from pymongo.errors import AutoReconnect, OperationFailure, PyMongoError

from cdc import frames
from cdc.errors import CdcError
from cdc.logs import get_logger

# A change event. A whole reply is decoded in one C call: RawBSONDocument, lazily inflated per change, cost
# about four times as much (each nested document re-checks its codec options).
Change = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Idle:
    """The stream had nothing new; `token` (post-batch resume token) covers every change before it."""

    token: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Ended:
    """The server closed the stream without an error (SecantusDB does so after a drop)."""


@dataclass(frozen=True, slots=True)
class Batch:
    """One reply of the stream: its changes, in order, and its post-batch resume token."""

    changes: list[Change]
    token: Mapping[str, Any] | None
    cursor_id: int = 0


Item = Change | Idle | Ended


class FetcherError(CdcError):
    """The fetcher process failed (exited, did not answer, or hit an unexpected error)."""


class BatchSource(Protocol):
    """Where `ChangeReader` gets replies from (a `RemoteStream`)."""

    def next_batch(self, timeout: float) -> Batch | Ended | None:
        """The next reply; None when none arrived within `timeout` seconds; raises the stream's error."""


class ChangeReader:
    """Changes, Idle and Ended markers from `source`, in the stream's order, up to `limit` at a time."""

    def __init__(self, source: BatchSource) -> None:
        self._source = source
        self._pending: list[Change] = []
        self._at = 0

    def take(self, limit: int, timeout: float) -> list[Item]:
        """Up to `limit` items, waiting up to `timeout` seconds for a reply when none is pending."""
        if self._at >= len(self._pending):
            got = self._source.next_batch(timeout)
            if got is None:
                return []
            if type(got) is Ended:
                return [got]
            assert isinstance(got, Batch)
            if not got.changes:
                return [Idle(got.token)]
            self._pending, self._at = got.changes, 0
        start = self._at
        self._at = min(len(self._pending), start + limit)
        return list(self._pending[start : self._at])


def _raise_error(payload: bytes) -> None:
    error = bson.decode(payload)
    kind, message = error.get("kind"), str(error.get("message", "unknown error"))
    if kind == "operation":
        raise OperationFailure(message, error.get("code"), error.get("details") or None)
    if kind == "connection":
        raise AutoReconnect(message)
    if kind == "driver":
        raise PyMongoError(message)
    raise FetcherError(f"change-stream fetcher failed: {message}")


class RemoteStream:
    """One change stream running in the fetcher; replies come in order through its pipe."""

    def __init__(self, fetcher: Fetcher, first: Batch, codec_options: CodecOptions[Change]) -> None:
        self._fetcher = fetcher
        self._codec_options = codec_options
        self._first: Batch | None = first
        self._done: Ended | None = None
        self.start_token = first.token
        self.closed = False

    def next_batch(self, timeout: float) -> Batch | Ended | None:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        if self._done is not None:
            return self._done
        frame = self._fetcher.read(timeout)
        if frame is None:
            return None
        kind, payload = frame
        if kind == frames.BATCH:
            return _batch(payload, self._codec_options)
        if kind == frames.ENDED:
            self._done = Ended()
            return self._done
        if kind == frames.ERROR:
            _raise_error(payload)
        raise FetcherError(f"change-stream fetcher sent an unexpected frame {kind!r}")

    def close(self) -> None:
        """Stop the stream in the fetcher (kills its cursor); what it still sent is discarded."""
        if not self.closed:
            self.closed = True
            self._fetcher.close_stream()


def _batch(reply_bytes: bytes, codec_options: CodecOptions[Change]) -> Batch:
    cursor = bson.decode(reply_bytes, codec_options)["cursor"]
    changes = cursor.get("nextBatch")
    if changes is None:
        changes = cursor.get("firstBatch", [])
    return Batch(changes, cursor.get("postBatchResumeToken"), int(cursor.get("id", 0)))


class Fetcher:
    """The fetcher process of one outbox tailer; one stream open at a time."""

    # Longest wait for the fetcher to answer OPEN (server selection included) or CLOSE (a getMore's await).
    ANSWER_SECONDS = 60.0

    def __init__(self, uri: str, options: Mapping[str, Any], *, name: str) -> None:
        self._hello = bson.encode({"uri": uri, "options": dict(options)})
        self._name = name
        self._proc: subprocess.Popen[bytes] | None = None
        self._stream: RemoteStream | None = None
        # (database, collection, cursor id) of the stream open on the server, and one left behind by a fetcher
        # that died: the tailer kills it (else the server keeps it, and its work, until its idle timeout).
        self._cursor: tuple[str, str, int] | None = None
        self.orphan: tuple[str, str, int] | None = None
        self._log = get_logger("cdc.fetcher", outbox=name)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> None:
        """Start the process now (it imports and connects while the tailer takes its lease)."""
        self._ensure_started()

    def _ensure_started(self) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            return proc
        if proc is not None:
            self._log.warning("fetcher_exited_restarting", exit_code=proc.returncode)
            self._discard()
        proc = self._proc = subprocess.Popen(
            [sys.executable, "-m", "cdc.fetcher"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
            close_fds=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        frames.widen(proc.stdout.fileno())
        self._send(frames.HELLO, self._hello)
        self._log.info("fetcher_started", pid=proc.pid)
        return proc

    def _send(self, kind: bytes, payload: bytes = b"") -> None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        try:
            frames.write_frame(proc.stdin.fileno(), kind, payload)
        except frames.PipeClosed as exc:
            self._discard()
            raise FetcherError(f"change-stream fetcher is gone: {exc}") from exc

    def read(self, timeout: float) -> tuple[bytes, bytes] | None:
        """The next frame from the fetcher, or None after `timeout` seconds; FetcherError if it is gone."""
        proc = self._proc
        if proc is None or proc.stdout is None:
            raise FetcherError("change-stream fetcher is not running")
        try:
            return frames.read_frame(proc.stdout.fileno(), timeout)
        except (frames.PipeClosed, OSError) as exc:
            self._discard()
            raise FetcherError(f"change-stream fetcher is gone: {exc}") from exc

    def open(
        self,
        database: str,
        collection: str,
        pipeline: Sequence[Mapping[str, Any]],
        *,
        batch_size: int,
        max_await_ms: int,
        resume_after: Mapping[str, Any] | None = None,
        start_at: Timestamp | None = None,
        codec_options: CodecOptions[Change],
    ) -> RemoteStream:
        """Open a change stream (closing the one before, if any); raises what `watch()` would raise."""
        if self._stream is not None:
            self._stream.close()
        self._ensure_started()
        spec: dict[str, Any] = {"database": database, "collection": collection, "pipeline": list(pipeline),
                                "batch_size": batch_size, "max_await_ms": max_await_ms}
        if resume_after is not None:
            spec["resume_after"] = resume_after
        if start_at is not None:
            spec["start_at"] = start_at
        self._send(frames.OPEN, bson.encode(spec))
        frame = self.read(self.ANSWER_SECONDS)
        if frame is None:
            self._discard()
            raise FetcherError(f"change-stream fetcher did not answer within {self.ANSWER_SECONDS:.0f}s")
        kind, payload = frame
        if kind != frames.BATCH:
            self.close_stream()
            if kind == frames.ERROR:
                _raise_error(payload)
            raise FetcherError(f"change-stream fetcher answered {kind!r} to OPEN")
        first = _batch(payload, codec_options)
        self._cursor = (database, collection, first.cursor_id) if first.cursor_id else None
        self._stream = RemoteStream(self, first, codec_options)
        return self._stream

    def close_stream(self, timeout: float | None = None) -> None:
        """Tell the fetcher to stop its stream and wait (up to `timeout`) for its answer, discarding what comes
        before it; a fetcher that does not answer in time is stopped."""
        self._stream = None
        if self._proc is None or self._proc.poll() is not None:
            return
        try:
            self._send(frames.CLOSE)
            deadline = time.monotonic() + (self.ANSWER_SECONDS if timeout is None else timeout)
            while (left := deadline - time.monotonic()) > 0:
                frame = self.read(left)
                if frame is not None and frame[0] == frames.CLOSED:
                    self._cursor = None
                    return
        except FetcherError:
            return
        self._log.warning("fetcher_stop_forced")
        self._discard()

    def _discard(self) -> None:
        """Stop the process (if it still runs) and forget it; the next open starts a new one."""
        if self._cursor is not None:
            self.orphan, self._cursor = self._cursor, None
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for pipe in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()
        try:
            proc.wait(timeout=5)  # it exits on its own once stdin closes
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def stop(self, timeout: float | None = None) -> None:
        """Close the stream (waiting up to `timeout` for the fetcher) and let the process exit."""
        self.close_stream(timeout)
        self._discard()
