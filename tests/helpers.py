"""Small test helpers: waiting on a condition with a deadline, unique names, a free port."""

from __future__ import annotations

import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from infra.servers.base import Server

T = TypeVar("T")
S = TypeVar("S", bound=Server)


def wait_for(
    predicate: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.1, what: str = "condition"
) -> T:
    """Poll until `predicate()` is truthy and return it; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    last = predicate()
    while not last:
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last value: {last!r})")
        time.sleep(interval)
        last = predicate()
    return last


def unique(prefix: str = "t") -> str:
    """A short unique name for a test's own topics, databases, keyspaces."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def private_server(server: S) -> Iterator[S]:
    """A test's own server: started and healthy, then stopped and its data removed."""
    server.ensure_running()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)
