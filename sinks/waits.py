"""Waiting until a versioned read model has caught up to a version (read-your-writes), without hammering its store.

A service answers a write with the version it wrote; a client that then reads the order view asks for that
version (`min_version`) and may wait a bounded time for the pipeline to bring it there. Many requests may wait
at once, so they do not poll one by one: every waiting request registers with one `VersionWatch`, whose single
task asks the store for the versions of *all* waited-for keys in ONE query per tick. The tick starts at
`min_tick` and doubles while nothing changes, up to `max_tick`; a new waiter or a key that caught up brings it
back down. So the store sees at most 1/min_tick queries a second, however many requests wait, and about
1/max_tick while the pipeline is stalled. (LISTEN/NOTIFY would need the sink's write path to notify, and
the read API's database user only reads.) The number of waiters is capped: beyond it, `WaitersFull`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from cdc.logs import get_logger

log = get_logger(__name__)

#: First and longest pause between two polls of the store (seconds).
MIN_TICK = 0.01
MAX_TICK = 0.2


class WaitersFull(Exception):
    """Too many requests are waiting already: retry later."""


@dataclass(eq=False)
class _Waiter:
    key: str
    min_version: int
    future: asyncio.Future[int]
    version: int | None = None  # what the store held at the last poll


@dataclass
class Outcome:
    """How a wait ended: `reached` the version, or not (then `version` is what the store held, None: no row)."""

    reached: bool
    version: int | None


@dataclass
class VersionWatch:
    """One poller for every request waiting on the same read model (see the module docstring)."""

    read_versions: Callable[[Sequence[str]], Mapping[str, int]]
    max_waiters: int = 1000
    min_tick: float = MIN_TICK
    max_tick: float = MAX_TICK
    #: Polls made so far (tests and logs: the load this puts on the store).
    polls: int = 0
    _waiters: set[_Waiter] = field(default_factory=set)
    _task: asyncio.Task[None] | None = None
    _fresh: bool = False

    @property
    def waiting(self) -> int:
        """Requests waiting now."""
        return len(self._waiters)

    async def wait(self, key: str, min_version: int, timeout: float) -> Outcome:
        """Wait up to `timeout` seconds until `key`'s version is at least `min_version`.

        Raises WaitersFull when `max_waiters` requests wait already, and the store's error when a poll fails."""
        if len(self._waiters) >= self.max_waiters:
            raise WaitersFull(f"{len(self._waiters)} requests are waiting already")
        waiter = _Waiter(key, min_version, asyncio.get_running_loop().create_future())
        self._waiters.add(waiter)
        self._fresh = True
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="version-watch")
        try:
            version = await asyncio.wait_for(waiter.future, timeout)
        except TimeoutError:
            return Outcome(False, waiter.version)
        finally:
            self._waiters.discard(waiter)
            waiter.future.cancel()  # no-op once done; a poll in flight then leaves it alone
        return Outcome(True, version)

    async def _run(self) -> None:
        tick = self.min_tick
        while self._waiters:
            await asyncio.sleep(tick)
            waiters = [w for w in self._waiters if not w.future.done()]
            if not waiters:
                continue
            self._fresh = False
            keys = sorted({w.key for w in waiters})
            self.polls += 1
            try:
                versions = await asyncio.to_thread(self.read_versions, keys)
            except Exception as exc:  # the store is down: every request waiting now gets the error (503)
                for w in waiters:
                    if not w.future.done():
                        w.future.set_exception(exc)
                tick = self.min_tick
                continue
            caught_up = False
            for w in waiters:
                w.version = versions.get(w.key)
                if w.version is not None and w.version >= w.min_version and not w.future.done():
                    w.future.set_result(w.version)
                    caught_up = True
            tick = self.min_tick if caught_up or self._fresh else min(self.max_tick, tick * 2)
