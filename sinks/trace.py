"""Where one event stands in a read model (`cdcflow trace`): applied or not, the row or edges it touched, and
whether its aggregate is held back behind a dead letter (its later events parked).

Applied means: for a versioned event, the model's version of its aggregate has reached the event's version
(the model folds versions in order and skips what is older); for an unversioned one, its id is recorded as
processed (Postgres), its refund counted on the order's edges (Neo4j), its view stored (Cassandra).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import sql

from cdc.errors import InvalidEventError
from cdc.event import Event
from sinks.base import PermanentSinkError, Sink, SinkError
from sinks.clickstream import ClickstreamSink, page_view_of
from sinks.postgres import PostgresFoldSink
from sinks.purchase_graph import PurchaseGraphSink


@dataclass
class Placement:
    """An event in one read model."""

    read_model: str
    namespace: str
    applied: bool | None = None  # None: cannot tell (the store did not answer, or nothing to compare)
    version: int | None = None  # the model's version of the aggregate
    row: Any = None  # the row, edges or view as stored
    held: dict[str, Any] | None = None  # the hold on the aggregate, when one is in force
    parked: bool = False  # this very event waits behind the hold
    note: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Found:
    applied: bool | None
    version: int | None = None
    row: Any = None
    parked: bool = False
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def place(sink: Sink, event: Event) -> Placement:
    """Where `event` stands in `sink`'s read model (store errors are reported in `error`, not raised)."""
    placement = Placement(sink.name, sink.namespace)
    try:
        if isinstance(sink, PostgresFoldSink):
            found = _postgres(sink, event)
        elif isinstance(sink, PurchaseGraphSink):
            found = _graph(sink, event)
        elif isinstance(sink, ClickstreamSink):
            found = _clickstream(sink, event)
        else:
            return Placement(sink.name, sink.namespace, note="this read model cannot be looked into")
        placement.applied, placement.version, placement.row = found.applied, found.version, found.row
        placement.parked, placement.note = found.parked, found.note
        placement.held = next((h for h in sink.holds() if h.get("aggregate_id") == event.aggregate_id), None)
    except (PermanentSinkError, InvalidEventError) as exc:
        placement.applied, placement.note = False, f"this read model cannot apply it: {exc}"
    except SinkError as exc:
        placement.error = str(exc)[:300]
    return placement


def _postgres(sink: PostgresFoldSink[Any], event: Event) -> _Found:
    key = sink.key_of(event)
    row = sink.get(key)
    data = None if row is None else sink.row_json(row)
    version = None if data is None else data.get("version")

    def lookups(conn: Any) -> tuple[bool, bool]:
        def has(suffix: str) -> bool:
            query = sql.SQL("SELECT 1 FROM {}.{} WHERE event_id = %s::uuid").format(
                sql.Identifier(sink.namespace), sql.Identifier(sink.table + suffix))
            return conn.execute(query, (event.event_id,)).fetchone() is not None

        return has("_processed"), has("_parked")

    processed, parked = sink._run("trace", lookups)
    # versioned: the row reached the event's version; unversioned: its id was processed
    applied = processed if event.version is None else version is not None and int(version) >= event.version
    return _Found(applied, None if version is None else int(version), data, parked)


def _graph(sink: PurchaseGraphSink, event: Event) -> _Found:
    rows = sink._read(
        """
        MATCH (c:$Customer)-[r:$PURCHASED {order_id: $order_id}]->(p:$Product)
        RETURN c.customer_id AS customer_id, p.product_id AS product_id, r.version AS version,
               r.status AS status, r.active AS active, r.refunded_amount AS refunded_amount,
               $event_id IN coalesce(r.refund_ids, []) AS refund_counted
        ORDER BY product_id
        """,
        order_id=event.aggregate_id, event_id=event.event_id,
    )
    parked = sink._read("MATCH (p:$ParkedEvent {event_id: $event_id}) RETURN count(p) AS n", event_id=event.event_id)
    versions = [int(r["version"]) for r in rows if r.get("version") is not None]
    version = max(versions) if versions else None
    if event.version is not None:
        applied = version is not None and version >= event.version
    else:
        applied = any(r["refund_counted"] for r in rows)
    edges = [{k: v for k, v in r.items() if k != "refund_counted"} for r in rows]
    return _Found(applied, version, edges, bool(parked and int(parked[0]["n"])))


def _clickstream(sink: ClickstreamSink, event: Event) -> _Found:
    view = page_view_of(event)
    rows = sink._query(
        f"SELECT user_id, day, ts, event_id, url, product_id FROM {sink.keyspace()}.page_views_by_user_day "
        "WHERE user_id = %s AND day = %s AND ts = %s AND event_id = %s",
        (view.user_id, view.day, view.ts, _uuid(event.event_id)),
    )
    stored = [
        {"user_id": r.user_id, "day": str(r.day), "ts": str(r.ts), "url": r.url, "product_id": r.product_id}
        for r in rows
    ]
    note = None
    if not stored and view.ts < datetime.now(UTC) - timedelta(days=sink.ttl_days):
        note = f"older than the clickstream's retention ({sink.ttl_days} days): expired, or never written"
    return _Found(bool(stored), None, stored[0] if stored else None, note=note)


def _uuid(text: str) -> Any:
    from uuid import UUID

    return UUID(text)
