"""Reads a change stream one batch ahead, in a thread of its own.

A change stream's getMore is synchronous: read in the forwarding loop, MongoDB would sit idle while the tailer
forwards a batch, and the tailer would sit idle while MongoDB builds the next one. The reader keeps up to
`max_buffered` changes ready, so both sides work at once. The stream belongs to the reader's thread from
`start()` on (pymongo cursors are not thread-safe); `close()` stops it and closes the stream there.

What `take()` returns keeps the stream's order: changes, `Idle` markers (an empty getMore, with the post-batch
resume token that covers every change before it), and finally `Ended` (the server closed the stream) or the
stream's exception, raised in the caller's thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pymongo.change_stream import CollectionChangeStream
from pymongo.errors import PyMongoError

# A change event as the stream decodes it (the tailer asks for RawBSONDocument).
Change = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Idle:
    """The stream had nothing new; `token` (post-batch resume token) covers every change before it."""

    token: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Ended:
    """The server closed the stream without an error (SecantusDB does so after a drop)."""


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException


Item = Change | Idle | Ended


class ChangeReader:
    """Prefetches `stream` in a daemon thread; `take()` hands out what is ready, in order."""

    def __init__(self, stream: CollectionChangeStream[Any], *, max_buffered: int, name: str) -> None:
        self._stream = stream
        self._max = max(1, max_buffered)
        # deque appends and pops are atomic: the two Events only wake whoever waits on an empty/full buffer.
        self._buffer: deque[Change | Idle | Ended | _Failed] = deque()
        self._ready = threading.Event()
        self._space = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> ChangeReader:
        self._thread.start()
        return self

    def _push(self, item: Change | Idle | Ended | _Failed) -> None:
        self._buffer.append(item)
        if not self._ready.is_set():
            self._ready.set()

    def _run(self) -> None:
        stream = self._stream
        try:
            while not self._stopping:
                if len(self._buffer) >= self._max:
                    self._space.clear()
                    if len(self._buffer) >= self._max:
                        self._space.wait(0.1)
                    continue
                change = stream.try_next()
                if change is not None:
                    self._push(change)
                    continue
                self._push(Idle(stream.resume_token))
                if not stream.alive:
                    self._push(Ended())
                    return
        except BaseException as exc:  # handed to the caller's thread, which decides what it means
            self._push(_Failed(exc))
        finally:
            with contextlib.suppress(PyMongoError):
                stream.close()

    def take(self, limit: int, timeout: float) -> list[Item]:
        """Up to `limit` items, waiting up to `timeout` seconds when none is ready; raises the stream's error."""
        buffer = self._buffer
        if not buffer:
            self._ready.clear()
            if not buffer:
                self._ready.wait(timeout)
        out: list[Item] = []
        popleft = buffer.popleft
        for _ in range(min(limit, len(buffer))):
            item = popleft()
            if type(item) is _Failed:
                if out:  # hand out what came before it first; the reader has stopped, so it stays last
                    buffer.appendleft(item)
                    break
                raise item.error
            out.append(item)  # type: ignore[arg-type]  # _Failed was just excluded
        if out and not self._space.is_set():
            self._space.set()
        return out

    def close(self, timeout: float = 10.0) -> None:
        """Stop reading and close the stream (in the reader's thread, after its current getMore)."""
        self._stopping = True
        self._space.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
