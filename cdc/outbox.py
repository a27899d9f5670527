"""The outbox collection: its document format, its index, and the queries the tailer and `status` run on it.

An outbox document is the event's document (`_id` = event id), nothing more: the tailer never writes to it.
What has reached Kafka is recorded once, in the tailer's checkpoint (a resume token and `scan_from`, see
cdc/checkpoint.py), not per document: marking every event published doubled the writes on the source database
(an update, and the oplog entry every change stream then reads), for a flag only recovery needed.

- Recovery (history lost): the catch-up scan re-sends every document from the checkpoint's `scan_from` on, in
  creation order (`after`).
- Retention: the leading tailer deletes documents older than `outbox_retention_seconds` that are also before
  `scan_from`, so nothing that has not reached Kafka is ever deleted, however long the tailer was away (`prune`).
- Backlog (`cdcflow status`): the documents created after the checkpoint's `watermark` (the newest event on
  Kafka), and the age of the oldest (`backlog`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.collection import Collection

from cdc.event import Event

OUTBOX_COLLECTION = "outbox"

# Order in which events were created: the catch-up scan sorts on it. Within one aggregate, `version` (where
# there is one) breaks ties between events of the same millisecond.
CREATION_ORDER: list[tuple[str, int]] = [("occurred_at", ASCENDING), ("version", ASCENDING), ("_id", ASCENDING)]

Document = dict[str, Any]


def outbox_document(event: Event) -> Document:
    """The document to insert in an outbox for `event`."""
    return event.to_document()


def ensure_outbox_indexes(outbox: Collection[Document]) -> None:
    """Create the outbox's index (idempotent): creation order, which the scan, pruning and backlog use."""
    outbox.create_indexes([IndexModel(CREATION_ORDER, name="creation_order")])


def _since(scan_from: datetime | None) -> Document:
    return {} if scan_from is None else {"occurred_at": {"$gte": scan_from}}


def after(outbox: Collection[Document], scan_from: datetime | None, batch_size: int = 1000) -> Iterable[Document]:
    """Every document from `scan_from` on (None: all of them), in creation order: the catch-up scan's source.

    Documents without an `occurred_at` (not events) sort first and come with a scan of everything."""
    return outbox.find(_since(scan_from)).sort(CREATION_ORDER).batch_size(batch_size)


def backlog(outbox: Collection[Document], watermark: datetime | None) -> tuple[int, datetime | None]:
    """(documents created after `watermark` (None: all), occurred_at of the oldest); any document shape is
    tolerated."""
    after_mark: Document = {"$type": "date"} if watermark is None else {"$gt": watermark}
    count = outbox.count_documents({} if watermark is None else {"occurred_at": after_mark})
    oldest = outbox.find_one({"occurred_at": after_mark}, sort=CREATION_ORDER, projection={"occurred_at": 1})
    when = oldest.get("occurred_at") if oldest else None
    return count, when if isinstance(when, datetime) else None


def prune(outbox: Collection[Document], before: datetime) -> int:
    """Delete the documents created before `before`; returns how many."""
    return outbox.delete_many({"occurred_at": {"$lt": before}}).deleted_count
