"""The one way cdcflow waits before trying again: exponential backoff with jitter, from tenacity.

`Backoff` serves loops that retry for as long as the process runs (a tailer session, a sink write): each
failure waits longer, up to a ceiling, and `reset()` starts over after a healthy spell. `retry_call` retries one
call a bounded number of times. The jitter keeps processes that failed together from retrying in step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential, wait_random
from tenacity.wait import wait_base

T = TypeVar("T")


def wait_strategy(initial: float, maximum: float) -> wait_base:
    """initial, 2x initial, 4x ... up to `maximum` seconds, plus up to `initial` of random jitter."""
    return wait_exponential(multiplier=initial, max=maximum) + wait_random(0, initial)


@dataclass
class _Attempt:
    """The part of tenacity's RetryCallState its wait strategies read."""

    attempt_number: int


class Backoff:
    """Delays for a loop that retries without end; `reset()` after a success."""

    def __init__(self, initial: float = 0.2, maximum: float = 5.0) -> None:
        self._wait = wait_strategy(initial, maximum)
        self._maximum = maximum + initial
        self.failures = 0

    def next(self) -> float:
        """The delay before the next attempt (one more failure counted)."""
        self.failures += 1
        return min(self._maximum, float(self._wait(_Attempt(self.failures))))  # type: ignore[arg-type]

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
) -> T:
    """`fn()`, tried up to `attempts` times on `retry_on` errors with backoff; the last error propagates."""
    retrying = Retrying(
        stop=stop_after_attempt(attempts), wait=wait_strategy(initial, maximum),
        retry=retry_if_exception_type(retry_on), reraise=True,
    )
    if sleep is not None:
        retrying = retrying.copy(sleep=sleep)
    return retrying(fn)
