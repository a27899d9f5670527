"""A circuit breaker on the MongoDB client: while MongoDB is down, fail fast instead of queueing.

closed    -> calls go through; `failure_threshold` consecutive connection failures (or a failed server
             heartbeat reported by the driver's monitor) open it.
open      -> calls fail at once with BreakerOpenError (the service answers 503 + Retry-After) until
             `reset_seconds` have passed.
half-open -> exactly one trial call goes through; success closes the breaker, failure opens it again.

Only outages count: no server could be selected (ServerSelectionTimeoutError) or a connection was refused,
reset or closed (the rest of pymongo's ConnectionFailure family). A slow call is not an outage: a request that
ran out of its time (NetworkTimeout under `call_timeout`, a server-side time limit) or that waited too long
for a pooled connection (WaitQueueTimeoutError, the pool is busy) gets its own 504 / 503 and leaves the breaker
as it was; a server that really hangs is caught by the driver's failed heartbeats. Business errors such as a
duplicate key are successes for the breaker.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import pymongo
from pymongo import monitoring
from pymongo.errors import (
    ConnectionFailure,
    NetworkTimeout,
    PyMongoError,
    ServerSelectionTimeoutError,
    WaitQueueTimeoutError,
)

from cdc.logs import get_logger

T = TypeVar("T")

log = get_logger(__name__)


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerOpenError(Exception):
    """MongoDB is considered down; retry after `retry_after` seconds."""

    def __init__(self, retry_after: float, reason: str = "MongoDB unavailable") -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.reason = reason

    @property
    def retry_after_header(self) -> str:
        """Whole seconds for the Retry-After header (at least 1)."""
        return str(max(1, math.ceil(self.retry_after)))


class Failure(enum.StrEnum):
    """What a MongoDB error says about the server."""

    OUTAGE = "outage"  # unreachable: counts towards opening the breaker
    BUSY = "busy"  # no pooled connection free in time: the server is up, the service is saturated
    SLOW = "slow"  # the call ran out of time: the server is up, this request was slow
    OTHER = "other"  # an answer from the server (a business or a programming error)


def classify(exc: BaseException) -> Failure:
    """Which kind of failure `exc` is (see the module docstring)."""
    if isinstance(exc, ServerSelectionTimeoutError):
        return Failure.OUTAGE
    if isinstance(exc, WaitQueueTimeoutError):
        return Failure.BUSY
    if isinstance(exc, NetworkTimeout):
        return Failure.SLOW
    if isinstance(exc, ConnectionFailure):
        return Failure.OUTAGE
    if isinstance(exc, PyMongoError) and exc.timeout:
        return Failure.SLOW
    return Failure.OTHER


def is_outage(exc: BaseException) -> bool:
    """True for errors that mean MongoDB is unreachable (not slow, not a business error)."""
    return classify(exc) is Failure.OUTAGE


class CircuitBreaker:
    """Thread-safe breaker; `call(fn)` runs fn through it."""

    def __init__(
        self,
        *,
        failure_threshold: int = 2,
        reset_seconds: float = 1.0,
        call_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "mongo",
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self.call_timeout = call_timeout
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False

    @property
    def state(self) -> BreakerState:
        """The current state (an OPEN breaker whose reset time passed reports HALF_OPEN)."""
        with self._lock:
            if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.reset_seconds:
                return BreakerState.HALF_OPEN
            return self._state

    def _before(self) -> bool:
        """Admit a call or raise BreakerOpenError; returns True when the call is the half-open trial."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return False
            waited = self._clock() - self._opened_at
            if self._state is BreakerState.OPEN and waited >= self.reset_seconds:
                self._state = BreakerState.HALF_OPEN
            if self._state is BreakerState.HALF_OPEN and not self._trial_running:
                self._trial_running = True
                return True
            raise BreakerOpenError(max(self.reset_seconds - waited, 0.0) or self.reset_seconds)

    def record_success(self) -> None:
        """A call reached MongoDB: close the breaker."""
        with self._lock:
            if self._state is not BreakerState.CLOSED:
                log.info("circuit_breaker_closed", breaker=self.name)
            self._state = BreakerState.CLOSED
            self._failures = 0
            self._trial_running = False

    def record_failure(self, reason: str = "") -> None:
        """A call could not reach MongoDB: count it, and open the breaker at the threshold."""
        with self._lock:
            self._failures += 1
            self._trial_running = False
            if self._state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
                self._open_locked(reason)

    def trip(self, reason: str = "") -> None:
        """Open the breaker now (e.g. the driver's monitor saw a failed heartbeat)."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                self._open_locked(reason)

    def _open_locked(self, reason: str) -> None:
        if self._state is not BreakerState.OPEN:
            log.warning("circuit_breaker_opened", breaker=self.name, reason=reason[:200])
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` (its MongoDB work bounded by `call_timeout`) through the breaker."""
        trial = self._before()
        try:
            if self.call_timeout is not None:
                with pymongo.timeout(self.call_timeout):
                    result = fn()
            else:
                result = fn()
        except BaseException as exc:
            if is_outage(exc):
                self.record_failure(str(exc))
            elif trial:
                # The trial reached the server (a business error): MongoDB is back.
                self.record_success()
            raise
        self.record_success()
        return result


class BreakerHeartbeatListener(monitoring.ServerHeartbeatListener):
    """Feeds the driver's server monitor into the breaker: a failed heartbeat trips it at once."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker
        #: Set False before closing the client (closing cancels the monitor's heartbeat).
        self.enabled = True

    def started(self, event: monitoring.ServerHeartbeatStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.ServerHeartbeatSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.ServerHeartbeatFailedEvent) -> None:
        if self.enabled:
            self.breaker.trip(f"heartbeat to {event.connection_id} failed: {event.reply}")
