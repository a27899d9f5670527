"""Cassandra clickstream: page views by (user, day), product views by day, with TTL retention.

Idempotent by construction: every view is a cell keyed by its event id (clustering (ts, event_id) in the user
table, (product_id, event_id) in the product table), so a duplicate or a replay rewrites the same cells. No
counters: "top products on a day" counts rows of the day's partition with GROUP BY product_id.

TTL follows the event time: a view expires `clickstream_ttl_days` after it *happened*, so a replay of an old
view gets the same expiry (and a view already past retention is not written at all).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar
from uuid import UUID

from cassandra import (
    AuthenticationFailed,
    DriverException,
    InvalidRequest,
    RequestValidationException,
    Unauthorized,
)
from cassandra.cluster import NoHostAvailable, Session
from cassandra.concurrent import execute_concurrent
from cassandra.query import PreparedStatement

from cdc.connect import CASSANDRA_READ_PROFILE, cassandra_replication, cassandra_session
from cdc.errors import InvalidEventError
from cdc.event import Event
from cdc.logs import get_logger
from cdc.schemas import PageViewed, parse_payload
from cdc.settings import Settings
from sinks.base import PermanentSinkError, Sink, TransientSinkError
from sinks.pointers import POINTER_TTL_SECONDS, cassandra_pointer, clear_cassandra_pointer

log = get_logger(__name__)

#: Concurrent async writes in flight per batch.
CONCURRENCY = 64


@dataclass(frozen=True)
class PageView:
    """One page view as stored."""

    user_id: str
    day: date
    ts: datetime
    event_id: str
    url: str
    product_id: str | None = None
    referrer: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "user_id": self.user_id, "day": self.day.isoformat(), "ts": self.ts.isoformat(),
            "event_id": self.event_id, "url": self.url, "product_id": self.product_id,
            "referrer": self.referrer,
        }


def page_view_of(event: Event) -> PageView:
    """The stored view of a PageViewed event (InvalidEventError otherwise). Time at millisecond precision."""
    payload = parse_payload(event)
    if not isinstance(payload, PageViewed):
        raise InvalidEventError(f"{event.type} is not a clickstream event")
    ts = payload.timestamp
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    ts = ts.replace(microsecond=(ts.microsecond // 1000) * 1000)
    return PageView(
        user_id=payload.user_id, day=ts.date(), ts=ts, event_id=event.event_id, url=payload.url,
        product_id=payload.product_id, referrer=payload.referrer,
    )


def ttl_seconds(ts: datetime, retention_days: int, now: datetime | None = None) -> int:
    """Seconds left before a view at `ts` leaves retention (<= 0: already gone)."""
    now = now or datetime.now(UTC)
    return int((ts + timedelta(days=retention_days) - now).total_seconds())


def classify_cassandra_error(exc: BaseException) -> Exception:
    """Validation errors (bad query/data) are permanent; everything else (unavailable, timeouts, and the store
    refusing our user: permissions, credentials) transient."""
    if isinstance(exc, Unauthorized | AuthenticationFailed):
        return TransientSinkError(f"cassandra refused cdcflow's user: {exc}")
    if isinstance(exc, RequestValidationException):
        return PermanentSinkError(f"cassandra rejected the write: {exc}")
    return TransientSinkError(f"cassandra unavailable: {type(exc).__name__}: {exc}")


class ClickstreamSink(Sink):
    """The `clickstream` read model on Cassandra (keyspace = namespace, or where a rebuild pointed it)."""

    name: ClassVar[str] = "clickstream"
    event_types: ClassVar[frozenset[str]] = frozenset({"PageViewed"})

    def __init__(self, settings: Settings, namespace: str = "cdcflow", ttl_days: int | None = None) -> None:
        super().__init__(namespace)
        self.settings = settings
        self.ttl_days = ttl_days if ttl_days is not None else settings.clickstream_ttl_days
        self._session: Session | None = None
        self._insert_user: PreparedStatement | None = None
        self._insert_product: PreparedStatement | None = None
        self._insert_visitor: PreparedStatement | None = None
        # The physical keyspace: the namespace, or where a `replay --rebuild` swap pointed it (sinks/namespaces).
        self._keyspace: str | None = None
        self._keyspace_read_at = 0.0

    # -- connection -----------------------------------------------------------------------------------

    def _connect(self) -> Session:
        if self._session is None:
            try:
                self._session = cassandra_session(self.settings)
            except (NoHostAvailable, DriverException, OSError) as exc:
                raise TransientSinkError(f"cassandra unreachable: {exc}") from exc
        return self._session

    def close(self) -> None:
        if self._session is not None:
            with contextlib.suppress(Exception):
                self._session.cluster.shutdown()
        self._session = None
        self._insert_user = self._insert_product = self._insert_visitor = None
        self._keyspace = None

    def keyspace(self) -> str:
        """The keyspace this namespace lives in now (re-read every few seconds: swaps happen live)."""
        if self._keyspace is None or time.monotonic() - self._keyspace_read_at > POINTER_TTL_SECONDS:
            session = self._connect()
            try:
                keyspace = cassandra_pointer(session, self.name, self.namespace) or self.namespace
            except Exception as exc:
                if self._keyspace is not None:  # keep the last known one; the write itself will tell
                    return self._keyspace
                raise classify_cassandra_error(exc) from exc
            if keyspace != self._keyspace:
                self._insert_user = self._insert_product = self._insert_visitor = None
            self._keyspace, self._keyspace_read_at = keyspace, time.monotonic()
        return self._keyspace

    def _execute(self, query: str, params: Sequence[Any] | None = None) -> Any:
        session = self._connect()
        try:
            return session.execute(query, params)
        except Exception as exc:
            err = classify_cassandra_error(exc)
            if isinstance(err, TransientSinkError):
                self.close()
            raise err from exc

    def _read(self, query: str, params: Sequence[Any] | None = None) -> list[Any]:
        """Rows of a read (read consistency); none when no worker created the keyspace or table yet (readers
        do no DDL)."""
        session = self._connect()
        try:
            return list(session.execute(query, params, execution_profile=CASSANDRA_READ_PROFILE))
        except InvalidRequest as exc:
            text = str(exc)
            if "does not exist" in text or "unconfigured table" in text:
                return []
            raise classify_cassandra_error(exc) from exc
        except Exception as exc:
            err = classify_cassandra_error(exc)
            if isinstance(err, TransientSinkError):
                self.close()
            raise err from exc

    # -- setup ----------------------------------------------------------------------------------------

    def setup(self) -> None:
        ks = self.keyspace()
        self._execute(
            f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {cassandra_replication(self.settings)}"
        )
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {ks}.page_views_by_user_day ("
            "user_id text, day date, ts timestamp, event_id uuid, url text, product_id text, referrer text, "
            "PRIMARY KEY ((user_id, day), ts, event_id)) WITH CLUSTERING ORDER BY (ts ASC, event_id ASC)"
        )
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {ks}.product_views_by_day ("
            "day date, product_id text, event_id uuid, user_id text, ts timestamp, "
            "PRIMARY KEY ((day), product_id, event_id))"
        )
        # Who has views at all (so a query can tell an unknown user from a quiet day). Written with the view's
        # time as the write timestamp, so the latest view's TTL wins whatever order events are replayed in.
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {ks}.visitors (user_id text PRIMARY KEY, last_view timestamp)"
        )
        self._prepare()

    def _prepare(self) -> tuple[PreparedStatement, PreparedStatement, PreparedStatement]:
        if self._insert_user is None or self._insert_product is None or self._insert_visitor is None:
            ks = self.keyspace()
            session = self._connect()
            try:
                self._insert_user = session.prepare(
                    f"INSERT INTO {ks}.page_views_by_user_day "
                    "(user_id, day, ts, event_id, url, product_id, referrer) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "USING TTL ?"
                )
                self._insert_product = session.prepare(
                    f"INSERT INTO {ks}.product_views_by_day (day, product_id, event_id, user_id, ts) "
                    "VALUES (?, ?, ?, ?, ?) USING TTL ?"
                )
                self._insert_visitor = session.prepare(
                    f"INSERT INTO {ks}.visitors (user_id, last_view) VALUES (?, ?) USING TTL ? AND TIMESTAMP ?"
                )
            except Exception as exc:
                err = classify_cassandra_error(exc)
                if isinstance(err, TransientSinkError):
                    self.close()
                raise err from exc
        return self._insert_user, self._insert_product, self._insert_visitor

    def drop(self) -> None:
        keyspace = self.keyspace()
        self._execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
        if keyspace != self.namespace:
            self._execute(f"DROP KEYSPACE IF EXISTS {self.namespace}")
            clear_cassandra_pointer(self._connect(), self.name, self.namespace)
        self._insert_user = self._insert_product = self._insert_visitor = None
        self._keyspace = None

    # -- write ----------------------------------------------------------------------------------------

    def write(self, batch: Sequence[Event]) -> None:
        if not batch:
            return
        views: list[PageView] = []
        for event in batch:
            try:
                views.append(page_view_of(event))
            except InvalidEventError as exc:
                raise PermanentSinkError(str(exc), event_id=event.event_id) from exc
        self.keyspace()  # follow a swap (re-prepares when the keyspace changed)
        insert_user, insert_product, insert_visitor = self._prepare()
        session = self._connect()
        now = datetime.now(UTC)
        statements: list[tuple[PreparedStatement, tuple[Any, ...]]] = []
        owners: list[str] = []
        for v in views:
            ttl = ttl_seconds(v.ts, self.ttl_days, now)
            if ttl <= 0:
                continue  # already past retention: it would expire at once
            uid = UUID(v.event_id)
            statements.append(
                (insert_user, (v.user_id, v.day, v.ts, uid, v.url, v.product_id, v.referrer, ttl))
            )
            owners.append(v.event_id)
            statements.append((insert_visitor, (v.user_id, v.ts, ttl, int(v.ts.timestamp() * 1_000_000))))
            owners.append(v.event_id)
            if v.product_id:
                statements.append((insert_product, (v.day, v.product_id, uid, v.user_id, v.ts, ttl)))
                owners.append(v.event_id)
        try:
            results = execute_concurrent(
                session, statements, concurrency=CONCURRENCY, raise_on_first_error=False
            )
        except Exception as exc:  # the session itself failed
            self.close()
            raise classify_cassandra_error(exc) from exc
        failures = [(owners[i], r.result_or_exc) for i, r in enumerate(results) if not r.success]
        if not failures:
            return
        errors = [(eid, classify_cassandra_error(e)) for eid, e in failures]
        transient = [e for _, e in errors if isinstance(e, TransientSinkError)]
        if transient:
            if any(isinstance(e, NoHostAvailable) for _, e in failures):
                self.close()
            raise transient[0]
        eid, first = errors[0]
        raise PermanentSinkError(str(first), event_id=eid)

    # -- reads ----------------------------------------------------------------------------------------

    def has_visitor(self, user_id: str) -> bool:
        """True when `user_id` has a page view within retention."""
        rows = self._read(f"SELECT user_id FROM {self.keyspace()}.visitors WHERE user_id = %s", (user_id,))
        return bool(rows)

    def views(self, user_id: str, day: date) -> list[PageView]:
        """A user's page views on `day`, oldest first."""
        rows = self._read(
            f"SELECT user_id, day, ts, event_id, url, product_id, referrer "
            f"FROM {self.keyspace()}.page_views_by_user_day WHERE user_id = %s AND day = %s",
            (user_id, day),
        )
        return [_view(r) for r in rows]

    def views_between(self, user_id: str, start: datetime, end: datetime) -> list[PageView]:
        """A user's page views with start <= ts < end (one partition per day), oldest first."""
        out: list[PageView] = []
        start, end = start.astimezone(UTC), end.astimezone(UTC)
        day = start.date()
        while day <= end.date():
            out.extend(v for v in self.views(user_id, day) if start <= v.ts < end)
            day += timedelta(days=1)
        return out

    def top_products(self, day: date, limit: int = 10) -> list[tuple[str, int]]:
        """Most viewed products on `day` as (product_id, views), most viewed first."""
        rows = self._read(
            f"SELECT product_id, count(*) AS n FROM {self.keyspace()}.product_views_by_day "
            "WHERE day = %s GROUP BY product_id",
            (day,),
        )
        counts = [(r.product_id, int(r.n)) for r in rows]
        counts.sort(key=lambda pc: (-pc[1], pc[0]))
        return counts[:limit]

    def snapshot(self) -> dict[str, list[Any]]:
        users = self._read(
            f"SELECT user_id, day, ts, event_id, url, product_id, referrer "
            f"FROM {self.keyspace()}.page_views_by_user_day"
        )
        products = self._read(
            f"SELECT day, product_id, event_id, user_id, ts FROM {self.keyspace()}.product_views_by_day"
        )
        return {
            "views": sorted((_view(r).to_json() for r in users), key=lambda v: (v["ts"], v["event_id"])),
            "product_views": sorted(
                [str(r.day), r.product_id, str(r.event_id), r.user_id, _utc(r.ts).isoformat()]
                for r in products
            ),
        }


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _view(r: Any) -> PageView:
    day = r.day.date() if hasattr(r.day, "date") else r.day
    return PageView(
        user_id=r.user_id, day=day, ts=_utc(r.ts), event_id=str(r.event_id), url=r.url,
        product_id=r.product_id, referrer=r.referrer,
    )
