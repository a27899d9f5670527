"""The circuit breaker's state machine, with a fake clock."""

from __future__ import annotations

import pytest
from pymongo.errors import (
    AutoReconnect,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    PyMongoError,
    ServerSelectionTimeoutError,
    WaitQueueTimeoutError,
)

from producers.breaker import BreakerOpenError, BreakerState, CircuitBreaker, Failure, classify


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def down() -> None:
    raise ServerSelectionTimeoutError("no server")


def test_opens_after_threshold_and_fails_fast() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, reset_seconds=5, clock=clock)
    for _ in range(2):
        with pytest.raises(ServerSelectionTimeoutError):
            breaker.call(down)
    assert breaker.state is BreakerState.OPEN
    calls: list[int] = []
    with pytest.raises(BreakerOpenError) as info:
        breaker.call(lambda: calls.append(1))
    assert calls == [], "an open breaker must not call through"
    assert info.value.retry_after_header == "5"


def test_half_open_trial_closes_on_success_and_reopens_on_failure() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_seconds=2, clock=clock)
    with pytest.raises(AutoReconnect):
        breaker.call(lambda: (_ for _ in ()).throw(AutoReconnect("gone")))
    clock.now += 2.5
    assert breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(ServerSelectionTimeoutError):
        breaker.call(down)  # the trial fails: open again, for a new reset period
    assert breaker.state.value == "open"
    with pytest.raises(BreakerOpenError):
        breaker.call(lambda: 1)
    clock.now += 2.5
    assert breaker.call(lambda: 42) == 42
    assert breaker.state.value == "closed"


def test_only_one_trial_at_a_time() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_seconds=1, clock=clock)
    breaker.trip("heartbeat failed")
    clock.now += 1.5

    def trial() -> str:
        with pytest.raises(BreakerOpenError):
            breaker.call(lambda: "second")  # while the trial runs, others still fail fast
        return "first"

    assert breaker.call(trial) == "first"
    assert breaker.state is BreakerState.CLOSED


def test_business_errors_do_not_count() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_seconds=1, clock=Clock())
    for _ in range(3):
        with pytest.raises(DuplicateKeyError):
            breaker.call(lambda: (_ for _ in ()).throw(DuplicateKeyError("dup", 11000)))
    assert breaker.state is BreakerState.CLOSED


@pytest.mark.parametrize(
    "error",
    [
        NetworkTimeout("timed out"),  # the call ran past call_timeout: slow, not down
        WaitQueueTimeoutError("pool busy"),  # every pooled connection in use: saturated, not down
        ExecutionTimeout("operation exceeded time limit", 50),  # a server-side time limit
    ],
    ids=["network-timeout", "wait-queue-timeout", "execution-timeout"],
)
def test_slow_or_busy_calls_do_not_open_the_breaker(error: PyMongoError) -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_seconds=1, clock=Clock())

    def slow() -> None:
        raise error

    for _ in range(5):
        with pytest.raises(type(error)):
            breaker.call(slow)
    assert breaker.state is BreakerState.CLOSED
    assert classify(error) in (Failure.SLOW, Failure.BUSY)


def test_outages_are_told_apart_from_slowness() -> None:
    assert classify(ServerSelectionTimeoutError("no server")) is Failure.OUTAGE
    assert classify(AutoReconnect("connection refused")) is Failure.OUTAGE
    assert classify(NetworkTimeout("timed out")) is Failure.SLOW
    assert classify(WaitQueueTimeoutError("busy")) is Failure.BUSY
    assert classify(DuplicateKeyError("dup", 11000)) is Failure.OTHER
