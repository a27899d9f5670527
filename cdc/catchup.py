"""Lost-history recovery: publish every unpublished outbox event, in creation order.

Used when the change stream cannot resume (history lost, an invalid or missing token, an invalidate after a
drop or rename). The caller opens the new change stream FIRST and keeps its starting token, then runs this
scan, then continues with the stream from that token: an event committed during the scan is seen by the
stream (and maybe by the scan too: a duplicate, which at-least-once allows), never by neither.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pymongo.collection import Collection

from cdc.outbox import Document, unpublished


@dataclass
class CatchupResult:
    """What the scan did."""

    sent: int = 0
    dead_lettered: int = 0


def catch_up(
    outbox: Collection[Document],
    forward: Callable[[Document, None], bool],
    *,
    should_stop: Callable[[], bool],
    batch_size: int = 1000,
) -> CatchupResult:
    """Forward every unpublished document of `outbox` (creation order) through `forward(doc, token=None)`.

    `forward` returns False when the document was dead-lettered (not a valid event). Acknowledgement,
    marking published and back-pressure are the caller's (`forward` blocks while too much is in flight).
    Stops early, with what it sent so far, when `should_stop()` turns true.
    """
    result = CatchupResult()
    for doc in unpublished(outbox, batch_size=batch_size):
        if should_stop():
            break
        if forward(doc, None):
            result.sent += 1
        else:
            result.dead_lettered += 1
    return result
