"""Checkpoints: where each outbox's stream resumes, kept in the tailer's own database, fenced and monotonic.

One document per outbox in `<tailer_state_database>.checkpoints`:
`{_id: "<db>.<coll>", token, start_at, watermark, scan_from, fence, session, seq, updated_at, owner}`.

- `token`: the change stream resumes after it. No token and no `start_at` means "no checkpoint": the tailer
  starts with the catch-up scan. `start_at` is an operator's reset to a point in time.
- `watermark`: the newest `occurred_at` of an event Kafka acknowledged (the backlog counts what came after).
  `scan_from`: where a catch-up scan starts (the watermark minus a margin that covers transactions committed
  out of creation order, or an operator's `--from`).
- Fencing: a write carries the writer's fence and only lands while no newer fence was stamped (each new lease
  holder stamps its fence when it takes over), so a tailer that lost its lease cannot overwrite a newer one.
- Monotonic: every leadership session gets a new, larger `session` number and numbers its writes `seq`; a write
  lands only if its (session, seq) is newer than the stored one, so a late write of an earlier session (a
  stalled call that finally arrives) can never move the checkpoint backwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson.timestamp import Timestamp
from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from cdc.errors import CdcError
from cdc.event import utcnow
from cdc.metrics import CHECKPOINT_TIME

Document = dict[str, Any]


class FencedError(CdcError):
    """A checkpoint write was refused: a newer lease holder exists (this tailer lost its lease)."""


@dataclass(frozen=True)
class Checkpoint:
    """Where the stream resumes, and how far events are known to be on Kafka."""

    token: Document | None = None
    start_at: Timestamp | None = None
    watermark: datetime | None = None
    scan_from: datetime | None = None
    fence: int = 0
    updated_at: datetime | None = None

    @property
    def empty(self) -> bool:
        return self.token is None and self.start_at is None


@dataclass(frozen=True)
class Position:
    """A checkpoint to write: the resume token and the watermarks after the events it covers."""

    token: Mapping[str, Any]
    watermark: datetime | None
    scan_from: datetime | None


class CheckpointStore:
    """Checkpoints of the outboxes; every write is conditional on the writer's fence and sequence."""

    def __init__(self, checkpoints: Collection[Document]) -> None:
        self.checkpoints = checkpoints

    def load(self, key: str) -> Checkpoint:
        doc = self.checkpoints.find_one({"_id": key})
        if doc is None:
            return Checkpoint()
        token, start_at = doc.get("token"), doc.get("start_at")
        watermark, scan_from = doc.get("watermark"), doc.get("scan_from")
        return Checkpoint(
            token=token if isinstance(token, dict) else None,
            start_at=start_at if isinstance(start_at, Timestamp) else None,
            watermark=watermark if isinstance(watermark, datetime) else None,
            scan_from=scan_from if isinstance(scan_from, datetime) else None,
            fence=int(doc.get("fence", 0)),
            updated_at=doc.get("updated_at"),
        )

    def begin_session(self, key: str, fence: int) -> int:
        """A new lease holder (or a new session of it) raises the fence and gets a new session number."""
        try:
            doc = self.checkpoints.find_one_and_update(
                {"_id": key}, {"$max": {"fence": fence}, "$inc": {"session": 1}, "$set": {"seq": 0}},
                upsert=True, return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:  # two first-time upserts raced; the other one created the document
            doc = self.checkpoints.find_one_and_update(
                {"_id": key}, {"$max": {"fence": fence}, "$inc": {"session": 1}, "$set": {"seq": 0}},
                return_document=ReturnDocument.AFTER,
            )
        if doc is None or int(doc.get("fence", 0)) > fence:
            raise FencedError(_fenced(key, fence))
        return int(doc["session"])

    def save(self, key: str, position: Position, *, fence: int, session: int, seq: int, owner: str = "") -> None:
        """Record that every event up to `position` is on Kafka.

        Raises FencedError if a newer lease holder exists; a write older than the stored one is dropped."""
        now = utcnow()
        fields: Document = {"token": dict(position.token), "start_at": None, "owner": owner, "fence": fence,
                            "session": session, "seq": seq, "updated_at": now}
        if position.watermark is not None:
            fields["watermark"] = position.watermark
        if position.scan_from is not None:
            fields["scan_from"] = position.scan_from
        result = self.checkpoints.update_one(
            {"_id": key, "fence": {"$lte": fence},
             "$or": [{"session": {"$lt": session}}, {"session": session, "seq": {"$lt": seq}}]},
            {"$set": fields},
        )
        if result.matched_count == 0:
            current = self.checkpoints.find_one({"_id": key}, {"fence": 1})
            if current is None or int(current.get("fence", 0)) > fence:
                raise FencedError(_fenced(key, fence))
            return  # an older write than the stored one: the checkpoint does not move back
        CHECKPOINT_TIME.labels(key).set(now.timestamp())

    def reset(self, key: str, fence: int, start_at: Timestamp | None, scan_from: datetime | None) -> None:
        """Operator reset: resume the stream at `start_at`, or (None) start over with the catch-up scan, which
        then starts at `scan_from` when given (else where the checkpoint says)."""
        fields: Document = {"token": None, "start_at": start_at, "owner": "reset", "updated_at": utcnow()}
        if scan_from is not None:
            fields["scan_from"] = scan_from
        result = self.checkpoints.update_one(
            {"_id": key, "fence": {"$lte": fence}}, {"$set": fields, "$max": {"fence": fence}}, upsert=False,
        )
        if result.matched_count == 0 and self.checkpoints.count_documents({"_id": key}):
            raise FencedError(_fenced(key, fence))


def _fenced(key: str, fence: int) -> str:
    return f"checkpoint of {key} is fenced by a newer lease holder (ours: {fence})"
