"""Cassandra clickstream: page views by (user, day), product views by day, with TTL retention.

Idempotent by construction: every view is a cell keyed by its event id (clustering (ts, event_id) in the user
table, (product_id, event_id) in the product table), so a duplicate or a replay rewrites the same cells. No
counters: "top products on a day" counts rows of the day's partition with GROUP BY product_id.

TTL follows the event time: a view expires `clickstream_ttl_days` after it *happened*, so a replay of an old
view gets the same expiry (and a view already past retention is not written at all).
"""

from __future__ import annotations

import contextlib
import heapq
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from typing import Any, ClassVar
from uuid import UUID

from cassandra import (
    AuthenticationFailed,
    DriverException,
    InvalidRequest,
    OperationTimedOut,
    ReadTimeout,
    Unauthorized,
)
from cassandra.cluster import NoHostAvailable, Session
from cassandra.concurrent import execute_concurrent
from cassandra.query import PreparedStatement, SimpleStatement

from cdc.connect import CASSANDRA_READ_PROFILE, cassandra_replication, cassandra_session
from cdc.errors import InvalidEventError
from cdc.event import Event
from cdc.logs import get_logger
from cdc.schemas import PageViewed, parse_payload
from cdc.settings import Settings
from sinks.base import (
    ENTRY_CHUNK,
    Entry,
    EntryKey,
    PermanentSinkError,
    Sink,
    SinkError,
    SinkRefusedError,
    SinkTimeoutError,
    TransientSinkError,
)
from sinks.pointers import POINTER_TTL_SECONDS, cassandra_pointer, clear_cassandra_pointer

log = get_logger(__name__)

#: Concurrent async writes in flight per batch.
CONCURRENCY = 64

#: Where a page of views ends: the last view's (ts, event_id); the next page starts after it.
ViewKey = tuple[datetime, str]


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


#: Longest TTL Cassandra takes (20 years).
MAX_TTL_SECONDS = 630_720_000
#: Longest key component Cassandra takes (user and product ids are partition and clustering keys).
MAX_KEY_BYTES = 65535

# InvalidRequest words that mean our schema is missing (dropped meanwhile): set up again and retry.
_MISSING_SCHEMA = ("unconfigured table", "does not exist")


def classify_cassandra_error(exc: BaseException) -> SinkError:
    """Refusals (Unauthorized, failed authentication) and anything that would hit every event are retried;
    a request Cassandra rejects for its data (InvalidRequest: a key too long, a TTL out of range) and a value the
    driver cannot encode are permanent."""
    name = type(exc).__name__
    if isinstance(exc, Unauthorized | AuthenticationFailed) or _auth_failure(exc):
        return SinkRefusedError(f"cassandra refuses us ({name}): {exc}")
    if isinstance(exc, InvalidRequest) and not any(words in str(exc) for words in _MISSING_SCHEMA):
        return PermanentSinkError(f"cassandra rejected the write: {exc}")
    if isinstance(exc, UnicodeError | OverflowError | struct.error):  # a value the driver cannot encode
        return PermanentSinkError(f"cassandra cannot take the data: {name}: {exc}")
    return TransientSinkError(f"cassandra unavailable: {name}: {exc}")


def _auth_failure(exc: BaseException) -> bool:
    """NoHostAvailable whose every host failed authentication."""
    errors = getattr(exc, "errors", None)
    if not isinstance(exc, NoHostAvailable) or not isinstance(errors, dict) or not errors:
        return False
    return all(isinstance(e, AuthenticationFailed) for e in errors.values())


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
                raise classify_cassandra_error(exc) from exc
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
        now = datetime.now(UTC)
        for event in batch:
            try:
                views.append(page_view_of(event))
            except InvalidEventError as exc:
                raise PermanentSinkError(str(exc), event_id=event.event_id) from exc
            except (OverflowError, ValueError) as exc:  # a time at the edge of the calendar, in UTC
                raise PermanentSinkError(f"page view time out of range: {exc}", event_id=event.event_id) from exc
            # Refused before any statement: one view is three inserts, and Cassandra would take some of them.
            for key in (views[-1].user_id, views[-1].product_id or ""):
                if len(key.encode()) > MAX_KEY_BYTES:
                    raise PermanentSinkError(f"id is longer than a Cassandra key may be: {len(key.encode())} bytes "
                                             f"(at most {MAX_KEY_BYTES})", event_id=event.event_id)
            if ttl_seconds(views[-1].ts, self.ttl_days, now) > MAX_TTL_SECONDS:
                raise PermanentSinkError(f"page view at {views[-1].ts.isoformat()} is too far ahead to keep: its "
                                         f"ttl would exceed Cassandra's {MAX_TTL_SECONDS} s", event_id=event.event_id)
        self.keyspace()  # follow a swap (re-prepares when the keyspace changed)
        insert_user, insert_product, insert_visitor = self._prepare()
        session = self._connect()
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

    def _query(self, query: str | SimpleStatement, params: Sequence[Any] | None = None) -> Iterable[Any]:
        """Rows of a read at the read consistency, bounded by `read_api_query_timeout_seconds` (past it:
        SinkTimeoutError); none when no worker created the keyspace or table yet (readers do no DDL)."""
        session = self._connect()
        try:
            return session.execute(  # type: ignore[no-any-return]
                query, params, timeout=self.settings.read_api_query_timeout_seconds,
                execution_profile=CASSANDRA_READ_PROFILE,
            )
        except (OperationTimedOut, ReadTimeout) as exc:
            # The store is up and the session stays: only this query was too slow.
            raise SinkTimeoutError("cassandra did not answer the query in time") from exc
        except InvalidRequest as exc:
            if any(words in str(exc) for words in _MISSING_SCHEMA):
                return []
            raise classify_cassandra_error(exc) from exc
        except Exception as exc:
            err = classify_cassandra_error(exc)
            if isinstance(err, TransientSinkError):
                self.close()
            raise err from exc

    def has_visitor(self, user_id: str) -> bool:
        """True when `user_id` has a page view within retention."""
        rows = self._query(f"SELECT user_id FROM {self.keyspace()}.visitors WHERE user_id = %s", (user_id,))
        return next(iter(rows), None) is not None

    def views(self, user_id: str, day: date) -> list[PageView]:
        """A user's page views on `day`, oldest first."""
        rows = self._query(
            f"SELECT user_id, day, ts, event_id, url, product_id, referrer "
            f"FROM {self.keyspace()}.page_views_by_user_day WHERE user_id = %s AND day = %s",
            (user_id, day),
        )
        return [_view(r) for r in rows]

    def views_between(
        self, user_id: str, start: datetime, end: datetime, *, after: ViewKey | None = None, limit: int | None = None
    ) -> list[PageView]:
        """A user's page views with start <= ts < end, oldest first (one partition per day): those after the
        view `after` (a page's last (ts, event_id)) when given, and at most `limit` of them."""
        out: list[PageView] = []
        start, end = start.astimezone(UTC), end.astimezone(UTC)
        if after is not None and after[0] < start:
            after = None
        day = (after[0] if after is not None else start).date()
        while datetime.combine(day, dt_time.min, UTC) < end and (limit is None or len(out) < limit):
            out.extend(self._views_of_day(user_id, day, start, end, after, None if limit is None else limit - len(out)))
            day += timedelta(days=1)
        return out

    def _views_of_day(
        self, user_id: str, day: date, start: datetime, end: datetime, after: ViewKey | None, limit: int | None
    ) -> list[PageView]:
        # Cassandra allows no mix of single- and multi-column relations on clustering columns: all multi-column.
        lower, params = "(ts) >= (%s)", [user_id, day, start]
        if after is not None:
            lower, params = "(ts, event_id) > (%s, %s)", [user_id, day, after[0], UUID(after[1])]
        query = (
            f"SELECT user_id, day, ts, event_id, url, product_id, referrer "
            f"FROM {self.keyspace()}.page_views_by_user_day WHERE user_id = %s AND day = %s AND {lower} AND (ts) < (%s)"
        )
        params.append(end)
        if limit is not None:
            query += " LIMIT %s"
            params.append(limit)
        return [_view(r) for r in self._query(query, params)]

    def top_products(self, day: date, limit: int = 10) -> list[tuple[str, int]]:
        """Most viewed products on `day` as (product_id, views), most viewed first.

        The store counts per product; only the `limit` best are kept while the driver pages through the counts,
        so memory stays bounded however many products were viewed that day."""
        rows = self._query(
            f"SELECT product_id, count(*) AS n FROM {self.keyspace()}.product_views_by_day "
            "WHERE day = %s GROUP BY product_id",
            (day,),
        )
        try:
            best = heapq.nsmallest(limit, ((-int(r.n), r.product_id) for r in rows))
        except (OperationTimedOut, ReadTimeout) as exc:  # a later page of the counts timed out
            raise SinkTimeoutError("cassandra did not answer the query in time") from exc
        return [(product, -negative) for negative, product in best]

    def snapshot(self) -> dict[str, list[Any]]:
        users = self._query(
            f"SELECT user_id, day, ts, event_id, url, product_id, referrer "
            f"FROM {self.keyspace()}.page_views_by_user_day"
        )
        products = self._query(
            f"SELECT day, product_id, event_id, user_id, ts FROM {self.keyspace()}.product_views_by_day"
        )
        return {
            "views": sorted((_view(r).to_json() for r in users), key=lambda v: (v["ts"], v["event_id"])),
            "product_views": sorted(
                [str(r.day), r.product_id, str(r.event_id), r.user_id, _utc(r.ts).isoformat()]
                for r in products
            ),
        }

    def entries(self, chunk: int = ENTRY_CHUNK) -> Iterator[Entry]:
        """Every row of the three tables (page views, product views, visitors), table by table, each in token
        order as Cassandra scans it (pages of `chunk` rows), the token first in the key.

        Within a partition Cassandra orders `uuid` event ids its own way, so rows that differ only by event id
        (same user, day and time; same day and product) are gathered and sorted here: memory holds one such
        group, i.e. at most one product's views of one day."""
        ks = self.keyspace()
        page_views = ("SELECT token(user_id, day) AS t, user_id, day, ts, event_id, url, product_id, referrer "
                      f"FROM {ks}.page_views_by_user_day")
        yield from self._scan(chunk, page_views, lambda r: (
            ("page_views", int(r.t), r.user_id, str(r.day), _ms(r.ts)), str(r.event_id), r.user_id,
            _view(r).to_json(),
        ))
        product_views = f"SELECT token(day) AS t, day, product_id, event_id, user_id, ts FROM {ks}.product_views_by_day"
        yield from self._scan(chunk, product_views, lambda r: (
            ("product_views", int(r.t), str(r.day), r.product_id), str(r.event_id), r.user_id,
            {"day": str(r.day), "product_id": r.product_id, "event_id": str(r.event_id), "user_id": r.user_id,
             "ts": _utc(r.ts).isoformat()},
        ))
        visitors = f"SELECT token(user_id) AS t, user_id, last_view FROM {ks}.visitors"
        yield from self._scan(chunk, visitors, lambda r: (
            ("visitors", int(r.t), r.user_id), "", r.user_id,
            {"user_id": r.user_id, "last_view": _utc(r.last_view).isoformat()},
        ))

    def _scan(
        self, chunk: int, query: str, row: Callable[[Any], tuple[EntryKey, str, str, dict[str, Any]]]
    ) -> Iterator[Entry]:
        """Entries of one table scan: consecutive rows with the same key prefix are sorted by their last part."""
        group: list[tuple[str, str, dict[str, Any]]] = []
        prefix: EntryKey | None = None
        rows = iter(self._query(SimpleStatement(query, fetch_size=chunk)))
        while True:
            try:
                r = next(rows, None)
            except (OperationTimedOut, ReadTimeout) as exc:  # a later page timed out
                raise SinkTimeoutError("cassandra did not answer the scan in time") from exc
            except Exception as exc:
                raise classify_cassandra_error(exc) from exc
            current = None if r is None else row(r)
            if prefix is not None and (current is None or current[0] != prefix):
                for last, aggregate, value in sorted(group, key=lambda g: g[0]):
                    yield Entry((*prefix, last), aggregate, None, value)
                group = []
            if current is None:
                return
            prefix = current[0]
            group.append(current[1:])


def _ms(ts: datetime) -> int:
    return int(_utc(ts).timestamp() * 1000)


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _view(r: Any) -> PageView:
    day = r.day.date() if hasattr(r.day, "date") else r.day
    return PageView(
        user_id=r.user_id, day=day, ts=_utc(r.ts), event_id=str(r.event_id), url=r.url,
        product_id=r.product_id, referrer=r.referrer,
    )
