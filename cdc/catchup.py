"""Lost-history recovery: send every outbox document from the checkpoint's `scan_from` on, in creation order.

Used when the change stream cannot resume (history lost, an invalid or missing token, an invalidate after a
drop or rename). The caller opens the new change stream FIRST and keeps its starting token, then runs this
scan, then continues with the stream from that token: an event committed during the scan is seen by the
stream (and maybe by the scan too: a duplicate, which at-least-once allows), never by neither.

`scan_from` is the newest event known to be on Kafka minus a margin (`tailer_scan_margin_seconds`): events are
sorted by when they were created, but committed (and so streamed) in commit order, so an event created a little
before the newest one on Kafka may have been committed after it. Everything in the margin is sent again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from pymongo.collection import Collection

from cdc.outbox import Document, after


@dataclass
class CatchupResult:
    """What the scan did."""

    sent: int = 0
    dead_lettered: int = 0


def catch_up(
    outbox: Collection[Document],
    scan_from: datetime | None,
    forward: Callable[[Document], bool],
    *,
    should_stop: Callable[[], bool],
    batch_size: int = 1000,
) -> CatchupResult:
    """Forward every document of `outbox` from `scan_from` on (None: all), in creation order, through `forward`.

    `forward` returns False when the document was dead-lettered (not a valid event). Acknowledgement,
    checkpoints and back-pressure are the caller's (`forward` blocks while too much is in flight).
    Stops early, with what it sent so far, when `should_stop()` turns true.
    """
    result = CatchupResult()
    for doc in after(outbox, scan_from, batch_size=batch_size):
        if should_stop():
            break
        if forward(doc):
            result.sent += 1
        else:
            result.dead_lettered += 1
    return result
