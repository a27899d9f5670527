"""The tailer's own dead letters: outbox documents that cannot reach Kafka as they are, kept for a re-drive.

Two kinds: `invalid` (the document is not a valid event) and `refused` (Kafka refused the record for good: larger
than its topic accepts, invalid, a topic that is forbidden or cannot be created). They are kept in the tailer's
MongoDB state database (`<tailer_state_database>.dead_letters`), not on a Kafka topic: a record Kafka refused
cannot be relied on to fit a Kafka dead-letter topic either, and the tailer can always write to its own database.

One document per outbox document: `{_id: "<outbox>/<document id>", outbox, document_id, topic, kind, reason,
at, document: a copy (dropped when too large to copy), replayed_at}`. The checkpoint moves past a dead-lettered
event only after its dead letter is written, so none is ever lost. `redrive` sends them again after a fix (a
larger `max.message.bytes`, a granted ACL, a corrected document): it reads the document from its outbox again
(so a fix made there counts), falling back to the copy.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.errors import DocumentTooLarge, WriteError

from cdc.acks import InFlight, Sent
from cdc.errors import InvalidEventError
from cdc.event import Event, utcnow
from cdc.logs import get_logger
from cdc.metrics import EVENTS
from cdc.publisher import Publisher
from cdc.settings import Settings

Document = dict[str, Any]
COLLECTION = "dead_letters"
INVALID = "invalid"
REFUSED = "refused"

log = get_logger(__name__)


@dataclass(frozen=True)
class TailerDeadLetter:
    """A dead letter of the tailer, as stored."""

    outbox: str
    document_id: Any
    topic: str | None
    kind: str
    reason: str
    at: datetime
    replayed_at: datetime | None
    document: Document | None

    @property
    def event_id(self) -> str:
        return str(self.document_id)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready data (the document as MongoDB extended JSON text)."""
        from bson import json_util

        return {
            "source": "tailer", "outbox": self.outbox, "event_id": self.event_id, "topic": self.topic,
            "kind": self.kind, "reason": self.reason, "at": self.at.isoformat(),
            "replayed": self.replayed_at is not None,
            "replayed_at": None if self.replayed_at is None else self.replayed_at.isoformat(),
            "document": None if self.document is None else json_util.dumps(self.document),
        }


class DeadLetterStore:
    """The tailer's dead letters in one collection."""

    def __init__(self, collection: Collection[Document]) -> None:
        self.collection = collection

    @classmethod
    def of(cls, settings: Settings, client: MongoClient[Document]) -> DeadLetterStore:
        return cls(client[settings.tailer_state_database][COLLECTION])

    def record(self, outbox: str, document: Mapping[str, Any], *, kind: str, reason: str,
               topic: str | None = None) -> None:
        """Keep `document` of `outbox` as a dead letter (idempotent: the same document twice is one letter)."""
        doc_id = document.get("_id")
        fields: Document = {"outbox": outbox, "document_id": doc_id, "topic": topic, "kind": kind,
                            "reason": reason[:2000], "at": utcnow(), "replayed_at": None, "document": dict(document)}
        key = {"_id": f"{outbox}/{doc_id}"}
        try:
            self.collection.replace_one(key, fields, upsert=True)
        except (DocumentTooLarge, WriteError):
            # The copy does not fit beside the metadata: keep the reference, the outbox still has the document.
            fields["document"] = None
            self.collection.replace_one(key, fields, upsert=True)
        EVENTS.labels("dead_lettered", outbox).inc()
        log.error("outbox_document_dead_lettered", outbox=outbox, event_id=str(doc_id), topic=topic, kind=kind,
                  reason=reason)

    def pending(self, outbox: str | None = None) -> int:
        """Dead letters not re-driven yet (of one outbox, or all)."""
        query: Document = {"replayed_at": None}
        if outbox is not None:
            query["outbox"] = outbox
        return self.collection.count_documents(query)

    def list(self, outbox: str | None = None, *, pending_only: bool = False) -> list[TailerDeadLetter]:
        """The dead letters, oldest first."""
        query: Document = {} if outbox is None else {"outbox": outbox}
        if pending_only:
            query["replayed_at"] = None
        return [
            TailerDeadLetter(d["outbox"], d.get("document_id"), d.get("topic"), d.get("kind", ""),
                             d.get("reason", ""), d["at"], d.get("replayed_at"), d.get("document"))
            for d in self.collection.find(query).sort([("at", ASCENDING), ("_id", ASCENDING)])
        ]


@dataclass
class RedriveReport:
    """What a re-drive did."""

    replayed: int = 0
    still_failing: dict[str, str] = field(default_factory=dict)  # event id -> reason


def redrive(settings: Settings, client: MongoClient[Document], *, outbox: str | None = None,
            timeout: float = 60.0) -> RedriveReport:
    """Send every pending dead letter of the tailer again, oldest first; a letter that fails again stays, with
    its new reason."""
    store = DeadLetterStore.of(settings, client)
    report = RedriveReport()
    letters = store.list(outbox, pending_only=True)
    if not letters:
        return report
    publisher = Publisher(settings, source="dlq-redrive")
    inflight = InFlight()
    sent: list[tuple[TailerDeadLetter, Sent]] = []
    try:
        for letter in letters:
            database, _, collection = letter.outbox.partition(".")
            current = client[database][collection].find_one({"_id": letter.document_id})
            document = current if current is not None else letter.document
            if document is None:
                report.still_failing[letter.event_id] = "the document is gone from the outbox and was too large to copy"
                continue
            try:
                event = Event.parse(document)
            except InvalidEventError as exc:
                _fail(store, letter, str(exc), report)
                continue
            entry = Sent(event.event_id, None, None, occurred_at=event.occurred_at, topic=event.topic)
            publisher.send_event(event, entry, inflight)
            sent.append((letter, entry))
        deadline = time.monotonic() + timeout
        while any(not (e.acked or e.refused) for _, e in sent) and time.monotonic() < deadline:
            if inflight.failed or publisher.fatal:
                break
            publisher.flush(0.2)
        for letter, entry in sent:
            if entry.acked:
                store.collection.update_one({"_id": f"{letter.outbox}/{letter.document_id}"},
                                            {"$set": {"replayed_at": utcnow()}})
                report.replayed += 1
            else:
                reason = entry.refused or inflight.failed or publisher.fatal or "not acknowledged in time"
                _fail(store, letter, reason, report)
    finally:
        publisher.close(timeout=5.0)
    log.info("tailer_dead_letters_redriven", replayed=report.replayed, still_failing=len(report.still_failing))
    return report


def _fail(store: DeadLetterStore, letter: TailerDeadLetter, reason: str, report: RedriveReport) -> None:
    store.collection.update_one({"_id": f"{letter.outbox}/{letter.document_id}"},
                                {"$set": {"reason": reason[:2000], "at": utcnow()}})
    report.still_failing[letter.event_id] = reason
