"""Resume tokens, kept in the tailer's own database and fenced by the lease's fencing token.

One document per outbox in `<tailer_state_database>.checkpoints`:
`{_id: "<db>.<coll>", token: <resume token> | None, start_at: <Timestamp> | None, fence: int,
updated_at: date, owner: str}`. No document (or no token and no start_at) means "no checkpoint": the tailer
starts with the catch-up scan. A write carries the writer's fence and only lands while no newer fence has
been stamped on the document (each new lease holder stamps its fence when it takes over).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson.timestamp import Timestamp
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
    """Where the stream resumes: after `token`, at `start_at` (operator reset), or nowhere (catch-up)."""

    token: Document | None = None
    start_at: Timestamp | None = None
    fence: int = 0
    updated_at: datetime | None = None

    @property
    def empty(self) -> bool:
        return self.token is None and self.start_at is None


class CheckpointStore:
    """Checkpoints of the outboxes; every write is conditional on the writer's fence."""

    def __init__(self, checkpoints: Collection[Document]) -> None:
        self.checkpoints = checkpoints

    def load(self, key: str) -> Checkpoint:
        doc = self.checkpoints.find_one({"_id": key})
        if doc is None:
            return Checkpoint()
        token = doc.get("token")
        start_at = doc.get("start_at")
        return Checkpoint(
            token=token if isinstance(token, dict) else None,
            start_at=start_at if isinstance(start_at, Timestamp) else None,
            fence=int(doc.get("fence", 0)),
            updated_at=doc.get("updated_at"),
        )

    def _write(self, key: str, fence: int, fields: Document) -> None:
        fields = {**fields, "fence": fence, "updated_at": utcnow()}
        try:
            result = self.checkpoints.update_one(
                {"_id": key, "fence": {"$lte": fence}}, {"$set": fields}, upsert=True
            )
        except DuplicateKeyError as exc:
            # The document exists with a newer fence, so the upsert tried to insert a second one.
            raise FencedError(_fenced(key, fence)) from exc
        if result.matched_count == 0 and result.upserted_id is None:
            raise FencedError(_fenced(key, fence))
        CHECKPOINT_TIME.labels(key).set(fields["updated_at"].timestamp())

    def save(self, key: str, token: Mapping[str, Any], fence: int, owner: str = "") -> None:
        """Record that everything up to `token` is on Kafka; raises FencedError if our lease is stale."""
        self._write(key, fence, {"token": dict(token), "start_at": None, "owner": owner})

    def stamp_fence(self, key: str, fence: int) -> None:
        """A new lease holder raises the document's fence, so older holders can no longer write."""
        try:
            self.checkpoints.update_one({"_id": key}, {"$max": {"fence": fence}}, upsert=True)
        except DuplicateKeyError:  # two first-time upserts raced; the other one created the document
            self.checkpoints.update_one({"_id": key}, {"$max": {"fence": fence}})

    def reset(self, key: str, fence: int, start_at: Timestamp | None) -> None:
        """Operator reset: resume at `start_at`, or (None) start over with the catch-up scan."""
        self._write(key, fence, {"token": None, "start_at": start_at, "owner": "reset"})


def _fenced(key: str, fence: int) -> str:
    return f"checkpoint of {key} is fenced by a newer lease holder (ours: {fence})"
