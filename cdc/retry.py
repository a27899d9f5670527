"""The one way cdcflow waits before trying again: exponential backoff with jitter, from tenacity.

`Backoff` serves loops that retry for as long as the process runs (a tailer session, a sink write): each
failure waits longer, up to a ceiling, and `reset()` starts over after a healthy spell. `retry_call` retries one
call a bounded number of times. The jitter keeps processes that failed together from retrying in step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_fixed,
    wait_random,
)
from tenacity.wait import wait_base

T = TypeVar("T")


def wait_strategy(initial: float, maximum: float) -> wait_base:
    """initial, 2x initial, 4x ... up to `maximum` seconds, plus up to `initial` of random jitter."""
    return wait_exponential(multiplier=initial, max=maximum) + wait_random(0, initial)


@dataclass
class _Attempt:
    """The part of tenacity's RetryCallState its wait strategies read."""

    attempt_number: int


def delay(attempt: int, initial: float, maximum: float) -> float:
    """The wait before retry number `attempt` (1, 2, …) of `wait_strategy(initial, maximum)`."""
    return min(maximum + initial, float(wait_strategy(initial, maximum)(_Attempt(attempt))))  # type: ignore[arg-type]


class Backoff:
    """Delays for a loop that retries without end; `reset()` after a success."""

    def __init__(self, initial: float = 0.2, maximum: float = 5.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.failures = 0

    def next(self) -> float:
        """The delay before the next attempt (one more failure counted)."""
        self.failures += 1
        return delay(self.failures, self.initial, self.maximum)

    def delays(self) -> Callable[[], float]:
        """A fresh sequence of delays, independent of this one's count: call it for the next delay."""
        return Backoff(self.initial, self.maximum).next

    def reset(self) -> None:
        """Start over from the shortest delay."""
        self.failures = 0


def retry_call(
    fn: Callable[[], T],
    *,
    attempts: int,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    initial: float = 0.2,
    maximum: float = 3.0,
    sleep: Callable[[float], None] | None = None,
    on_retry: Callable[[BaseException, int], None] | None = None,
) -> T:
    """`fn()`, tried up to `attempts` times on `retry_on` errors with backoff; the last error propagates.

    `on_retry(error, attempt)` is called before each wait (to log it)."""

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            error = state.outcome.exception()
            if error is not None:
                on_retry(error, state.attempt_number)

    retrying = Retrying(
        stop=stop_after_attempt(attempts), wait=wait_strategy(initial, maximum),
        retry=retry_if_exception_type(retry_on), reraise=True, before_sleep=before_sleep,
    )
    if sleep is not None:
        retrying = retrying.copy(sleep=sleep)
    return retrying(fn)


def poll_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2, what: str = "condition") -> None:
    """Call `predicate` every `interval` seconds until it is true; TimeoutError after `timeout` seconds."""
    retrying = Retrying(
        stop=stop_after_delay(timeout), wait=wait_fixed(interval), retry=retry_if_result(lambda ok: not ok),
        retry_error_callback=lambda _state: False,
    )
    if not retrying(predicate):
        raise TimeoutError(f"{what} not reached within {timeout:.0f}s")
