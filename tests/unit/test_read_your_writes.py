"""Read-your-writes waits (sinks/waits.py): one batched poll per tick for every waiter, backing off while nothing
changes, bounded by the caller's timeout and by a cap on waiters; a failing poll reaches every waiter."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

import pytest

from sinks.waits import VersionWatch, WaitersFull


class FakeStore:
    """Versions by key, and every poll it answered (the keys it was asked for)."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}
        self.calls: list[list[str]] = []
        self.fail: Exception | None = None

    def read(self, keys: Sequence[str]) -> Mapping[str, int]:
        self.calls.append(list(keys))
        if self.fail is not None:
            raise self.fail
        return {k: self.versions[k] for k in keys if k in self.versions}


def test_a_waiter_returns_once_its_version_is_reached() -> None:
    store = FakeStore()
    store.versions["o1"] = 1
    watch = VersionWatch(store.read)

    async def run() -> tuple[bool, int | None, float]:
        async def write_later() -> None:
            await asyncio.sleep(0.15)
            store.versions["o1"] = 3

        writer = asyncio.create_task(write_later())
        started = time.monotonic()
        outcome = await watch.wait("o1", 3, timeout=5)
        await writer
        return outcome.reached, outcome.version, time.monotonic() - started

    reached, version, took = asyncio.run(run())
    assert reached and version == 3
    # soon after the write (ticks are at most 200 ms; the slack is for a loaded machine), long before the timeout
    assert 0.15 <= took < 1.5
    assert watch.waiting == 0


def test_a_waiter_that_times_out_gets_what_the_store_holds() -> None:
    store = FakeStore()
    store.versions["o1"] = 2
    watch = VersionWatch(store.read)

    async def run() -> tuple[bool, int | None, float]:
        started = time.monotonic()
        outcome = await watch.wait("o1", 5, timeout=0.3)
        return outcome.reached, outcome.version, time.monotonic() - started

    reached, version, took = asyncio.run(run())
    assert not reached and version == 2
    assert 0.3 <= took < 1.5  # at its timeout (slack for a loaded machine), not later
    assert watch.waiting == 0


def test_many_waiters_share_one_query_per_tick_and_the_ticks_back_off() -> None:
    store = FakeStore()
    watch = VersionWatch(store.read, min_tick=0.01, max_tick=0.2)

    async def run() -> None:
        waits = [watch.wait(f"o{i}", 1, timeout=1.0) for i in range(300)]
        outcomes = await asyncio.gather(*waits)
        assert not any(o.reached for o in outcomes)

    started = time.monotonic()
    asyncio.run(run())
    took = time.monotonic() - started
    # 300 requests waiting 1 s: a handful of queries (10, 20, 40, 80, 160, 200, 200 … ms apart), not 300 x polls
    assert took < 1.5
    assert 4 <= len(store.calls) <= 12, len(store.calls)
    assert all(len(keys) == 300 for keys in store.calls)  # every waiter's key in each single query
    assert watch.polls == len(store.calls)


def test_keys_that_catch_up_are_answered_and_the_rest_keep_waiting() -> None:
    store = FakeStore()
    watch = VersionWatch(store.read)

    async def run() -> list[bool]:
        async def write_half() -> None:
            await asyncio.sleep(0.1)
            store.versions.update({f"o{i}": 1 for i in range(0, 20, 2)})

        writer = asyncio.create_task(write_half())
        outcomes = await asyncio.gather(*(watch.wait(f"o{i}", 1, timeout=0.4) for i in range(20)))
        await writer
        return [o.reached for o in outcomes]

    assert asyncio.run(run()) == [i % 2 == 0 for i in range(20)]


def test_waiters_beyond_the_cap_are_refused() -> None:
    store = FakeStore()
    watch = VersionWatch(store.read, max_waiters=3)

    async def run() -> None:
        held = [asyncio.create_task(watch.wait(f"o{i}", 1, timeout=0.3)) for i in range(3)]
        await asyncio.sleep(0)  # let them register
        assert watch.waiting == 3
        with pytest.raises(WaitersFull):
            await watch.wait("o9", 1, timeout=0.3)
        await asyncio.gather(*held)
        assert watch.waiting == 0
        assert not (await watch.wait("o9", 1, timeout=0.05)).reached  # room again

    asyncio.run(run())


def test_a_failing_poll_reaches_every_waiter() -> None:
    store = FakeStore()
    store.fail = ConnectionError("postgres is down")
    watch = VersionWatch(store.read)

    async def run() -> list[BaseException | object]:
        return await asyncio.gather(*(watch.wait(f"o{i}", 1, timeout=2) for i in range(5)), return_exceptions=True)

    started = time.monotonic()
    results = asyncio.run(run())
    assert all(isinstance(r, ConnectionError) for r in results)
    assert time.monotonic() - started < 1  # at the first poll, not at the deadline
