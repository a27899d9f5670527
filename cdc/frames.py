"""Length-prefixed frames over a pipe: one kind byte, a 4-byte big-endian length, a BSON payload.

The tailer and its change-stream fetcher process (`cdc.fetcher`) talk this way over the fetcher's stdin and
stdout. Reads and writes are plain blocking `os.read` / `os.write` on file descriptors: they release the GIL
while they wait, and a reply from MongoDB crosses over as the bytes the server sent, never parsed in between.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import struct

from cdc.errors import CdcError

_HEADER = struct.Struct(">cI")

# Parent -> fetcher.
HELLO = b"H"  # {uri, options}: connect (once, first)
OPEN = b"O"  # {database, collection, pipeline, batch_size, max_await_ms, resume_after?, start_at?}
CLOSE = b"C"  # stop the open stream (kill its cursor), answer CLOSED
# Fetcher -> parent.
BATCH = b"B"  # the raw reply of aggregate / getMore
ERROR = b"E"  # {kind, message, code?, details?}: the stream is over
ENDED = b"X"  # the server closed the cursor (id 0) after the last BATCH
CLOSED = b"K"  # answer to CLOSE: nothing of that stream follows

# A pipe this large lets the fetcher run several getMores ahead of a busy tailer (Linux; 1 MiB is the
# unprivileged maximum by default). Elsewhere the default pipe size only narrows the overlap.
PIPE_SIZE = 1 << 20


class PipeClosed(CdcError):
    """The other end of the pipe is gone (it exited or was killed)."""


def widen(fd: int) -> None:
    """Ask for a PIPE_SIZE pipe buffer on `fd`; silently keeps the default where that is not possible."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, set_size, PIPE_SIZE)


def write_frame(fd: int, kind: bytes, payload: bytes | memoryview = b"") -> None:
    """Write one frame, whole; raises PipeClosed when the reader is gone."""
    data = memoryview(_HEADER.pack(kind, len(payload)) + bytes(payload))
    try:
        while data:
            data = data[os.write(fd, data) :]
    except (BrokenPipeError, OSError) as exc:
        raise PipeClosed(f"pipe closed while writing: {exc}") from exc


def _read_exactly(fd: int, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = os.readv(fd, [view[got:]])
        if n == 0:
            raise PipeClosed("pipe closed while reading")
        got += n
    return bytes(buffer)


def read_frame(fd: int, timeout: float | None = None) -> tuple[bytes, bytes] | None:
    """The next (kind, payload); None when nothing arrived within `timeout` seconds (None: wait for it)."""
    if timeout is not None:
        ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
        if not ready:
            return None
    kind, size = _HEADER.unpack(_read_exactly(fd, _HEADER.size))
    return kind, _read_exactly(fd, size) if size else b""
