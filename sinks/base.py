"""The sink port: what every read model writer implements, free of Faust so live workers and replay share it.

A sink receives batches of validated events (in topic-partition order, so per aggregate in order) and applies
them idempotently: a batch written twice, or an older event written after a newer one, changes nothing.

Errors decide what the caller does next:
- `TransientSinkError`: the store is unreachable or overloaded; retry the same batch later (with backoff).
  `SinkRefusedError`, a kind of it: the store refuses *us* (credentials, permissions, read-only): a property of
  our configuration, not of the event, so it is retried too (and reported as such).
- `PermanentSinkError`: this input can never be written (the store rejects its *data*: out of range, too long,
  a constraint); dead-letter it and go on. Only errors that depend on the event's data are permanent: an error
  that would hit every event alike (a bug, a missing table) is transient, so good events are never dead-lettered.

Holds: a read model folded from versioned events depends on their order. When the caller dead-letters one of an
aggregate's events it calls `hold()`; until that very event is written (re-driven after a fix), the sink keeps
the aggregate's later events aside ("parked", in its own store) and applies them right after it, so a re-driven
event still takes effect instead of being dropped as stale. Sinks whose result does not depend on event order
(the clickstream) hold nothing.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from cdc.event import Event


class SinkError(Exception):
    """Base class of every sink error."""


class TransientSinkError(SinkError):
    """The write may succeed later (server down, timeout, deadlock): retry it."""


class SinkTimeoutError(TransientSinkError):
    """A query ran past its deadline (the store is up, the query was too slow): the read API answers 504."""


class SinkRefusedError(TransientSinkError):
    """The store refuses us (authentication, authorization, read-only): retry, and say so."""


class PermanentSinkError(SinkError):
    """The write can never succeed for this input: dead-letter it."""

    def __init__(self, message: str, event_id: str | None = None) -> None:
        super().__init__(message)
        self.event_id = event_id


@dataclass(frozen=True)
class Hold:
    """A dead-lettered event of an aggregate: the aggregate's later events wait until it is written."""

    aggregate_id: str
    event_id: str
    version: int
    reason: str


#: An entry's key: unique in its read model; `entries()` yields keys in ascending (Python tuple) order.
EntryKey = tuple[str | int, ...]

#: Rows per read when a sink walks its whole model (`entries`): memory stays bounded by a chunk.
ENTRY_CHUNK = 1000


@dataclass(frozen=True)
class Entry:
    """One row of a read model, as `replay --rebuild --verify` compares it with the same row elsewhere.

    `aggregate` is the Kafka key (aggregate id) of the events the row is folded from, so a difference can be
    explained by that aggregate's later events; `version` is the aggregate version the row reflects (None for
    rows that no version orders, e.g. a page view)."""

    key: EntryKey
    aggregate: str
    version: int | None
    value: Any


_NAMESPACE = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


def check_namespace(namespace: str) -> str:
    """A namespace is a Postgres schema, a Cassandra keyspace or a Neo4j label prefix: keep it plain."""
    if not _NAMESPACE.match(namespace):
        raise ValueError(
            f"bad sink namespace {namespace!r}: lower-case letters, digits and '_', starting with a letter"
        )
    return namespace


class Sink(abc.ABC):
    """A read model: created at `setup()`, written in idempotent batches, read by its own queries."""

    #: Read-model name (`order_view`, `purchase_graph`, `clickstream`, `stock_view`).
    name: ClassVar[str] = ""
    #: Event types this sink applies; anything else on its topic is a dead letter.
    event_types: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, namespace: str) -> None:
        self.namespace = check_namespace(namespace)

    @abc.abstractmethod
    def setup(self) -> None:
        """Create schemas, tables, keyspaces, constraints: idempotent, safe to call at every start."""

    @abc.abstractmethod
    def write(self, batch: Sequence[Event]) -> None:
        """Apply `batch` (validated events, per-aggregate order kept) idempotently, all or nothing per call
        where the store allows; raise TransientSinkError or PermanentSinkError."""

    def hold(self, holds: Sequence[Hold]) -> None:
        """Keep back each hold's aggregate's later events until the held event itself is written (idempotent).

        The default holds nothing: for a read model whose result does not depend on the order of events."""
        return None

    def holds(self) -> list[dict[str, Any]]:
        """The aggregates held back now: aggregate_id, event_id, version, reason, parked (events waiting)."""
        return []

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections (idempotent); a later `write` may reconnect."""

    @abc.abstractmethod
    def snapshot(self) -> Any:
        """The whole read model as plain, comparable data (tests, rebuild checks). Not for large models."""

    @abc.abstractmethod
    def entries(self, chunk: int = ENTRY_CHUNK) -> Iterator[Entry]:
        """Every row of the model, ascending by key, read `chunk` rows at a time (a rebuild's `--verify` walks
        two models side by side in key order). Nothing when the model was never set up."""

    @abc.abstractmethod
    def drop(self) -> None:
        """Remove this namespace's schema/keyspace/nodes entirely (tests, `--rebuild` shadows)."""

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(namespace={self.namespace!r})"
