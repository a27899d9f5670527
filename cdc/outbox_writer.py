"""The outbox writer every service uses: its business write and the outbox insert in ONE transaction.

A service hands `OutboxWriter.transact` a callback that does the business write in the given session and
returns `(result, events)`. The writer then validates every event (schema of its type, its topic, its encoded
size) and inserts `outbox_document(event)` for each into the service's `outbox`, still inside the same
transaction. The whole callback runs under `ClientSession.with_transaction`, so TransientTransactionError
(write conflicts) retries the callback and UnknownTransactionCommitResult retries the commit, as the driver
specifies. Any other exception aborts the transaction: neither the business write nor the event is visible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import bson
from pymongo import MongoClient
from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from cdc.errors import EventTooLargeError, InvalidEventError
from cdc.event import Event
from cdc.logs import get_logger
from cdc.outbox import OUTBOX_COLLECTION, ensure_outbox_indexes, outbox_document
from cdc.schemas import TOPIC_OF_TYPE, parse_payload

Document = dict[str, Any]
T = TypeVar("T")

#: What a transaction callback returns: its own result, and the events to put in the outbox.
Work = Callable[[ClientSession], tuple[T, Sequence[Event]]]

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024

log = get_logger(__name__)


def encoded_size(event: Event) -> int:
    """The larger of the event's two encodings: JSON (the Kafka value) and BSON (the outbox document)."""
    return max(len(event.to_json()), len(bson.encode(outbox_document(event))))


def validate_event(event: Event, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
    """Refuse an event that could not be processed downstream.

    Raises InvalidEventError for an unknown type, a type on the wrong topic or an invalid payload, and
    EventTooLargeError (a subclass) when its encoded size is over `max_bytes`.
    """
    expected_topic = TOPIC_OF_TYPE.get(event.type)
    if expected_topic is None:
        raise InvalidEventError(f"unknown event type {event.type!r}")
    if event.topic != expected_topic:
        raise InvalidEventError(f"{event.type} belongs on topic {expected_topic!r}, not {event.topic!r}")
    parse_payload(event)
    size = encoded_size(event)
    if size > max_bytes:
        raise EventTooLargeError(
            f"event {event.event_id} ({event.type} for {event.aggregate_type} {event.aggregate_id}) is "
            f"{size} bytes encoded, over the {max_bytes}-byte limit (max_event_bytes)"
        )


class OutboxWriter:
    """Writes business changes and their events atomically into one service database."""

    def __init__(
        self,
        client: MongoClient[Document],
        database: str,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_commit_time_ms: int | None = None,
    ) -> None:
        self.client = client
        self.database: Database[Document] = client.get_database(database)
        self.outbox: Collection[Document] = self.database[OUTBOX_COLLECTION]
        self.max_event_bytes = max_event_bytes
        self.max_commit_time_ms = max_commit_time_ms

    def ensure_indexes(self) -> None:
        """Create the outbox's index (creation order: the catch-up scan, pruning and the backlog use it)."""
        ensure_outbox_indexes(self.outbox)

    def transact(self, work: Work[T]) -> T:
        """Run `work` and insert its events in one transaction; returns `work`'s result.

        `work` may be called more than once (transient errors retry it), so it must only write through the
        session it is given and must not have other side effects.
        """
        events_seen: list[Event] = []

        def callback(session: ClientSession) -> T:
            result, events = work(session)
            events = list(events)
            for event in events:
                validate_event(event, self.max_event_bytes)
            self._insert(session, events)
            events_seen[:] = events
            return result

        with self.client.start_session() as session:
            result = session.with_transaction(
                callback,
                read_concern=ReadConcern("snapshot"),
                write_concern=WriteConcern(w="majority"),
                max_commit_time_ms=self.max_commit_time_ms,
            )
        for event in events_seen:
            log.debug(
                "outbox event committed",
                event_id=event.event_id,
                type=event.type,
                aggregate_id=event.aggregate_id,
                version=event.version,
                db=self.database.name,
            )
        return result

    def write(self, events: Sequence[Event]) -> None:
        """Insert events alone (no business write) in one transaction: all of them or none."""
        self.transact(lambda _session: (None, events))

    def _insert(self, session: ClientSession, events: Sequence[Event]) -> None:
        """The outbox insert (a separate method so tests can inject a failure between the two writes)."""
        if not events:
            return
        docs = [outbox_document(event) for event in events]
        if len(docs) == 1:
            self.outbox.insert_one(docs[0], session=session)
        else:
            self.outbox.insert_many(docs, ordered=True, session=session)
