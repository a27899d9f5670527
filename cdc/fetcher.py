"""The change-stream fetcher: a process of the tailer's own (`python -m cdc.fetcher`) that runs its stream's
aggregate and getMore commands and passes each reply on, unparsed, through a pipe.

Why a process: a change stream is a chain of sequential getMores, and MongoDB builds the next batch only once
the previous reply has been read off the socket. In the tailer's own process the reading thread needs the GIL
for every chunk of every reply, so while the forwarding thread encodes and sends events the server sat waiting
for its reply to be read. Here nothing else wants this process's GIL; the tailer reads whole replies from a
1 MiB pipe whenever it is ready, and the fetcher stays several batches ahead of it (back-pressure is the pipe:
when it is full the fetcher's write waits).

Protocol (frames of `cdc.frames`): HELLO once, then per stream OPEN -> BATCH... -> (ERROR | ENDED)? and
CLOSE -> CLOSED. The commands are the standard `aggregate` with `$changeStream` and `getMore` on an explicit
session, so any MongoDB replica set serves them. The fetcher exits when its stdin closes (the tailer stopped
or died, kill -9 included); it ignores SIGINT and SIGTERM, which are the tailer's to handle.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sys
import threading
from typing import Any

import bson
from bson.codec_options import CodecOptions
from bson.errors import InvalidDocument
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongo.client_session import ClientSession
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from cdc import frames

_RAW: CodecOptions[RawBSONDocument] = CodecOptions(document_class=RawBSONDocument)
# Commands come from the parent's frames; a stream runs until one arrives (that is the CLOSE).
_Command = tuple[bytes, dict[str, Any]]


def _read_commands(commands: queue.Queue[_Command]) -> None:
    """Stdin -> `commands`; exits the process when the parent is gone (EOF), whatever the stream is doing."""
    try:
        while True:
            frame = frames.read_frame(0)
            assert frame is not None  # no timeout: a frame or PipeClosed
            kind, payload = frame
            commands.put((kind, bson.decode(payload) if payload else {}))
    except (frames.PipeClosed, OSError):
        pass
    os._exit(0)


def _error_frame(exc: BaseException) -> bytes:
    if isinstance(exc, OperationFailure):
        details = dict(exc.details or {})
        # The server's own message: the exception's str() already has the full reply appended.
        error: dict[str, Any] = {"kind": "operation", "message": str(details.get("errmsg") or exc),
                                 "code": exc.code, "details": details}
    elif isinstance(exc, ConnectionFailure):
        error = {"kind": "connection", "message": str(exc)}
    elif isinstance(exc, PyMongoError):
        error = {"kind": "driver", "message": f"{type(exc).__name__}: {exc}"}
    else:
        error = {"kind": "internal", "message": f"{type(exc).__name__}: {exc}"}
    try:
        return bson.encode(error)
    except (InvalidDocument, OverflowError):  # details the codec cannot take: keep the message
        error.pop("details", None)
        return bson.encode(error)


def _change_stream_stage(spec: dict[str, Any]) -> dict[str, Any]:
    stage: dict[str, Any] = {}
    if spec.get("resume_after") is not None:
        stage["resumeAfter"] = spec["resume_after"]
    if spec.get("start_at") is not None:
        stage["startAtOperationTime"] = spec["start_at"]
    return {"$changeStream": stage}


def _stream(client: MongoClient[RawBSONDocument], spec: dict[str, Any], commands: queue.Queue[_Command],
            out: int) -> None:
    """Run one stream until the parent's next command, an error or the server's end of it."""
    database = client.get_database(spec["database"])
    collection = spec["collection"]
    session: ClientSession = client.start_session(causal_consistency=False)
    cursor_id = 0
    try:
        reply: RawBSONDocument = database.command(  # type: ignore[assignment]  # the codec is RawBSONDocument
            {"aggregate": collection, "pipeline": [_change_stream_stage(spec), *spec["pipeline"]],
             "cursor": {"batchSize": spec["batch_size"]}},
            session=session, codec_options=_RAW,
        )
        while True:
            cursor_id = int(reply["cursor"]["id"])
            frames.write_frame(out, frames.BATCH, reply.raw)
            if cursor_id == 0:
                frames.write_frame(out, frames.ENDED)
                return
            if not commands.empty():  # the parent's CLOSE
                return
            reply = database.command(  # type: ignore[assignment]
                {"getMore": Int64(cursor_id), "collection": collection, "batchSize": spec["batch_size"],
                 "maxTimeMS": spec["max_await_ms"]},
                session=session, codec_options=_RAW,
            )
    except frames.PipeClosed:
        raise
    except Exception as exc:  # every failure is the parent's to judge: sent as an ERROR frame
        cursor_id = 0 if isinstance(exc, ConnectionFailure) else cursor_id
        frames.write_frame(out, frames.ERROR, _error_frame(exc))
    finally:
        if cursor_id:
            with contextlib.suppress(PyMongoError):  # else the server reaps it after its idle timeout
                database.command({"killCursors": collection, "cursors": [Int64(cursor_id)]}, session=session)
        session.end_session()


def main() -> None:
    """Serve the parent on stdin/stdout until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out = sys.stdout.fileno()
    frames.widen(out)
    # Anything printed by accident must not corrupt the frames.
    sys.stdout = sys.stderr
    commands: queue.Queue[_Command] = queue.Queue()
    threading.Thread(target=_read_commands, args=(commands,), name="commands", daemon=True).start()
    kind, hello = commands.get()
    if kind != frames.HELLO:
        raise SystemExit(f"cdc.fetcher: expected HELLO, got {kind!r}")
    client: MongoClient[RawBSONDocument] = MongoClient(hello["uri"], document_class=RawBSONDocument,
                                                        **hello.get("options", {}))
    try:
        while True:
            kind, spec = commands.get()
            if kind == frames.OPEN:
                _stream(client, spec, commands, out)
                kind, spec = commands.get()  # the CLOSE that every OPEN gets
            if kind == frames.CLOSE:
                frames.write_frame(out, frames.CLOSED)
    except frames.PipeClosed:
        pass
    finally:
        client.close()


if __name__ == "__main__":
    main()
