"""Acknowledgement tracking: what was sent to Kafka, in stream order, and how far the checkpoint may move.

The checkpoint may only move over a prefix of events that are each either acknowledged by Kafka or refused for
good and recorded as a dead letter; never past an event still in flight.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(slots=True)
class Sent:
    """One outbox document handed to the producer, and what became of it."""

    event_id: str
    token: Mapping[str, Any] | None  # the change's resume token (None from the catch-up scan)
    committed_at: datetime | None  # the change's wall time, else the event's occurred_at
    occurred_at: datetime | None = None
    topic: str = ""
    acked: bool = False
    ack_time: float = 0.0
    #: Kafka refused it for good (too large, invalid, forbidden topic): it must become a dead letter.
    refused: str | None = None
    #: A refusal that was recorded as a dead letter (the checkpoint may move past it).
    dead_lettered: bool = False
    document: Mapping[str, Any] | None = None  # kept only for refused events, to dead-letter them

    @property
    def done(self) -> bool:
        """Acknowledged, or refused and dead-lettered: the checkpoint may move past it."""
        return self.acked or self.dead_lettered


@dataclass
class InFlight:
    """Sent events in stream order; `take_done_prefix()` yields what may be checkpointed.

    One thread adds and takes (the outbox's), the producer's delivery thread acknowledges. deque appends and pops
    are atomic and `acked` is set last, so no lock is needed, and none is taken per event."""

    entries: deque[Sent] = field(default_factory=deque)
    #: Refused entries waiting to be recorded as dead letters (appended by the delivery thread).
    refusals: deque[Sent] = field(default_factory=deque)
    #: A delivery error that is not the event's fault (the producer is broken): the session must restart.
    failed: str | None = None

    def add(self, entry: Sent) -> None:
        self.entries.append(entry)

    def ack(self, entry: Sent, when: float) -> None:
        entry.ack_time = when
        entry.acked = True

    def refuse(self, entry: Sent, reason: str, when: float) -> None:
        entry.ack_time = when
        entry.refused = reason
        self.refusals.append(entry)

    def fail(self, reason: str) -> None:
        if self.failed is None:
            self.failed = reason

    def __len__(self) -> int:
        return len(self.entries)

    def take_done_prefix(self) -> list[Sent]:
        """Remove and return the longest prefix of done events (never past one still in flight)."""
        out: list[Sent] = []
        entries = self.entries
        while entries and entries[0].done:
            out.append(entries.popleft())
        return out
