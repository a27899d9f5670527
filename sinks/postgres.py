"""Shared machinery of the Postgres read models: one row per aggregate, folded from its events.

A subclass gives the table, how to read/write a row, and a pure fold `(row | None, event) -> row | None`
(None: the event changes nothing). `write` then, in ONE transaction per batch:
1. reads the holds of the batch's aggregates (`<table>_holds`, see sinks/holds.py): events of a held aggregate
   are parked in `<table>_parked`; a held event that comes back is applied with the events parked behind it,
2. locks the rows concerned (`SELECT … FOR UPDATE`, in key order so two workers cannot deadlock),
3. drops unversioned events already recorded in the `<table>_processed` table and records the new ones,
4. folds in Python (versioned events at or below the row's version change nothing),
5. upserts the changed rows (`executemany`, pipelined), guarded by version.

Errors are classified by SQLSTATE class: only those that depend on the data written are permanent (22 data
exception: out of range, bad value, NUL bytes; 23 integrity constraint; 54 program limit: a key too long to
index); 28 (authentication), 42501 (privilege) and 25006 (read-only transaction) mean the server refuses *us*
(`SinkRefusedError`, retried); everything else (connection loss, shutdown, a missing table) is transient.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, ClassVar, Generic, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from cdc.connect import postgres_connect
from cdc.event import Event
from cdc.logs import get_logger
from cdc.settings import Settings
from sinks.base import (
    ENTRY_CHUNK,
    Entry,
    Hold,
    PermanentSinkError,
    Sink,
    SinkError,
    SinkRefusedError,
    TransientSinkError,
)
from sinks.holds import plan_holds, unpark

R = TypeVar("R")

log = get_logger(__name__)


#: SQLSTATE classes of errors caused by the data written: the event can never be written as it is.
DATA_CLASSES = frozenset({"22", "23", "54"})
#: SQLSTATEs (or classes) of "the server refuses us": authentication, privileges, a read-only transaction.
REFUSED_CLASSES = frozenset({"28"})
REFUSED_STATES = frozenset({"42501", "25006"})
# A failed login carries no SQLSTATE in psycopg (the connection never opened): recognised by the server's words.
_REFUSED_LOGIN = ("password authentication failed", "no pg_hba.conf entry", "permission denied", "role \"")


def classify_postgres_error(exc: BaseException) -> SinkError:
    """Map an error of a Postgres write to a permanent (dead letter), refused or transient (retry) sink error."""
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate or ""
        name = type(exc).__name__
        if state[:2] in REFUSED_CLASSES or state in REFUSED_STATES:
            return SinkRefusedError(f"postgres refuses the write ({name}, SQLSTATE {state}): {exc}")
        if state[:2] in DATA_CLASSES or (not state and isinstance(exc, psycopg.DataError)):
            return PermanentSinkError(f"postgres rejected the data ({name}, SQLSTATE {state or '-'}): {exc}")
        if not state and isinstance(exc, psycopg.OperationalError) and any(
            words in str(exc) for words in _REFUSED_LOGIN
        ):
            return SinkRefusedError(f"postgres refuses the connection: {exc}")
        return TransientSinkError(f"postgres unavailable ({name}, SQLSTATE {state or '-'}): {exc}")
    if isinstance(exc, UnicodeError | OverflowError):  # a value of the event that cannot be sent at all
        return PermanentSinkError(f"postgres cannot take the data: {type(exc).__name__}: {exc}")
    return TransientSinkError(f"postgres unreachable: {type(exc).__name__}: {exc}")


class PostgresFoldSink(Sink, Generic[R], abc.ABC):
    """A Postgres read model keyed by one text column, rows folded from events."""

    #: Table name (inside the namespace's schema).
    table: ClassVar[str] = ""
    #: Primary key column.
    key_column: ClassVar[str] = ""
    #: Columns in row order (key first, `version` included).
    columns: ClassVar[tuple[str, ...]] = ()
    #: Column definitions for CREATE TABLE (without the primary key clause).
    column_ddl: ClassVar[str] = ""

    def __init__(self, settings: Settings, namespace: str = "cdcflow") -> None:
        super().__init__(namespace)
        self.settings = settings
        self._conn: psycopg.Connection[TupleRow] | None = None

    # -- to implement ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def key_of(self, event: Event) -> str:
        """The row key an event belongs to (raise PermanentSinkError if it has none)."""

    @abc.abstractmethod
    def fold(self, row: R | None, event: Event) -> R | None:
        """The row after `event`, or None when the event changes nothing (stale version)."""

    @abc.abstractmethod
    def to_db(self, row: R) -> tuple[Any, ...]:
        """Row → column values in `columns` order."""

    @abc.abstractmethod
    def from_db(self, values: Sequence[Any]) -> R:
        """Column values in `columns` order → row."""

    @abc.abstractmethod
    def row_json(self, row: R) -> dict[str, Any]:
        """A row as plain JSON-ready data (snapshots, queries with --json)."""

    # -- connection -----------------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[TupleRow]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._discard()
            self._conn = postgres_connect(self.settings, autocommit=True)
        return self._conn

    def _discard(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection
                self._conn.close()
        self._conn = None

    def _run(self, what: str, fn: Callable[[psycopg.Connection[TupleRow]], Any]) -> Any:
        try:
            return fn(self._connection())
        except SinkError:
            raise
        except (psycopg.Error, OSError, UnicodeError, OverflowError) as exc:
            err = classify_postgres_error(exc)
            if isinstance(err, TransientSinkError):
                self._discard()  # a new connection picks up changed grants, passwords, role settings
            log.debug("postgres_error", sink=self.name, what=what, error=str(exc))
            raise err from exc

    def close(self) -> None:
        self._discard()

    # -- names ----------------------------------------------------------------------------------------

    def _t(self, suffix: str = "") -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.namespace), sql.Identifier(self.table + suffix))

    @property
    def tables(self) -> list[str]:
        """Every table of this read model (a `--rebuild` swap moves them all)."""
        return [self.table + suffix for suffix in ("", "_processed", "_holds", "_parked")]

    # -- setup / drop ---------------------------------------------------------------------------------

    def setup(self) -> None:
        def do(conn: psycopg.Connection[TupleRow]) -> None:
            with conn.transaction():
                # Serialise concurrent setups (two workers starting at once) on one advisory lock.
                lock = f"cdcflow-setup-{self.namespace}"
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.namespace)))
                conn.execute(
                    sql.SQL("CREATE TABLE IF NOT EXISTS {} ({} text PRIMARY KEY, {})").format(
                        self._t(), sql.Identifier(self.key_column), sql.SQL(self.column_ddl)
                    )
                )
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} (event_id uuid PRIMARY KEY, "
                        "processed_at timestamptz NOT NULL DEFAULT now())"
                    ).format(self._t("_processed"))
                )
                # version as text: a hold may be for an event refused because its version is out of range
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} (aggregate_id text PRIMARY KEY, event_id uuid NOT NULL, "
                        "version text NOT NULL, reason text NOT NULL, held_at timestamptz NOT NULL DEFAULT now())"
                    ).format(self._t("_holds"))
                )
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} (event_id uuid PRIMARY KEY, aggregate_id text NOT NULL, "
                        "seq bigserial NOT NULL, value bytea NOT NULL, "
                        "parked_at timestamptz NOT NULL DEFAULT now())"
                    ).format(self._t("_parked"))
                )
                conn.execute(
                    sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (aggregate_id, seq)").format(
                        sql.Identifier(f"{self.table}_parked_aggregate"), self._t("_parked")
                    )
                )

        self._run("setup", do)

    def drop(self) -> None:
        def do(conn: psycopg.Connection[TupleRow]) -> None:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.namespace)))

        self._run("drop", do)

    # -- write ----------------------------------------------------------------------------------------

    def write(self, batch: Sequence[Event]) -> None:
        if not batch:
            return
        parked, released = self._run("write", lambda conn: self._write(conn, batch))
        if parked or released:
            log.info("holds_applied", sink=self.name, namespace=self.namespace, parked=parked,
                     released=released)

    def hold(self, holds: Sequence[Hold]) -> None:
        if not holds:
            return

        def do(conn: psycopg.Connection[TupleRow]) -> None:
            with conn.cursor() as c:
                c.executemany(
                    sql.SQL(
                        "INSERT INTO {} (aggregate_id, event_id, version, reason) VALUES (%s, %s, %s, %s) "
                        "ON CONFLICT (aggregate_id) DO NOTHING"
                    ).format(self._t("_holds")),
                    [(h.aggregate_id, h.event_id, str(h.version), h.reason) for h in holds],
                )

        self._run("hold", do)

    def _hold_back(
        self, conn: psycopg.Connection[TupleRow], batch: Sequence[Event]
    ) -> tuple[list[Event], dict[str, str], int, list[str]]:
        """Park the batch's events of held aggregates. Returns the events to apply (released ones included),
        for each released event the id of the held event it waited for, the number parked, the released."""
        aggregates = sorted({e.aggregate_id for e in batch})
        held = {
            str(a): str(e)
            for a, e in conn.execute(
                sql.SQL(
                    "SELECT aggregate_id, event_id::text FROM {} WHERE aggregate_id = ANY(%s) "
                    "ORDER BY aggregate_id FOR UPDATE"
                ).format(self._t("_holds")),
                (aggregates,),
            ).fetchall()
        }
        if not held:
            return list(batch), {}, 0, []
        plan = plan_holds(batch, held)
        parked: dict[str, list[Event]] = {}
        if plan.released:
            cur = conn.execute(
                sql.SQL("SELECT aggregate_id, value FROM {} WHERE aggregate_id = ANY(%s) ORDER BY seq").format(
                    self._t("_parked")
                ),
                (plan.released,),
            )
            for aggregate, value in cur.fetchall():
                parked.setdefault(str(aggregate), []).append(unpark(bytes(value), held[str(aggregate)]))
            for suffix in ("_parked", "_holds"):
                conn.execute(
                    sql.SQL("DELETE FROM {} WHERE aggregate_id = ANY(%s)").format(self._t(suffix)), (plan.released,)
                )
        if plan.park:
            with conn.cursor() as c:
                c.executemany(
                    sql.SQL(
                        "INSERT INTO {} (event_id, aggregate_id, value) VALUES (%s, %s, %s) "
                        "ON CONFLICT (event_id) DO NOTHING"
                    ).format(self._t("_parked")),
                    [(e.event_id, e.aggregate_id, e.to_json()) for e in plan.park],
                )
        behind = {e.event_id: held[a] for a, events in parked.items() for e in events}
        return plan.events(parked), behind, len(plan.park), plan.released

    def _write(self, conn: psycopg.Connection[TupleRow], batch: Sequence[Event]) -> tuple[int, list[str]]:
        """One transaction; returns (events parked, aggregates released)."""
        with conn.transaction():
            events, behind, parked, released = self._hold_back(conn, batch)
            if not events:
                return parked, released
            keyed = [(_released(self.key_of, e, behind), e) for e in events]
            keys = sorted({k for k, _ in keyed})
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in self.columns)
            current: dict[str, R] = {}
            cur = conn.execute(
                sql.SQL("SELECT {} FROM {} WHERE {} = ANY(%s) ORDER BY {} FOR UPDATE").format(
                    cols, self._t(), sql.Identifier(self.key_column), sql.Identifier(self.key_column)
                ),
                (keys,),
            )
            for values in cur.fetchall():
                row = self.from_db(values)
                current[str(values[0])] = row

            unversioned = sorted({e.event_id for _, e in keyed if e.version is None})
            seen: set[str] = set()
            if unversioned:
                cur = conn.execute(
                    sql.SQL("SELECT event_id::text FROM {} WHERE event_id = ANY(%s::uuid[])").format(
                        self._t("_processed")
                    ),
                    (unversioned,),
                )
                seen = {r[0] for r in cur.fetchall()}
                fresh = [(eid,) for eid in unversioned if eid not in seen]
                if fresh:
                    with conn.cursor() as c:
                        c.executemany(
                            sql.SQL("INSERT INTO {} (event_id) VALUES (%s) ON CONFLICT DO NOTHING").format(
                                self._t("_processed")
                            ),
                            fresh,
                        )

            changed: dict[str, R] = {}
            for key, event in keyed:
                if event.version is None:
                    if event.event_id in seen:
                        continue
                    seen.add(event.event_id)  # a duplicate inside the batch
                new = _released(partial(self.fold, current.get(key)), event, behind)
                if new is not None:
                    current[key] = new
                    changed[key] = new

            if changed:
                updates = sql.SQL(", ").join(
                    sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                    for c in self.columns[1:]
                )
                stmt = sql.SQL(
                    "INSERT INTO {t} ({cols}) VALUES ({ph}) ON CONFLICT ({key}) DO UPDATE SET {updates} "
                    "WHERE {t}.version <= EXCLUDED.version"
                ).format(
                    t=self._t(),
                    cols=cols,
                    ph=sql.SQL(", ").join(sql.Placeholder() * len(self.columns)),
                    key=sql.Identifier(self.key_column),
                    updates=updates,
                )
                with conn.cursor() as c:
                    c.executemany(stmt, [self.to_db(changed[k]) for k in sorted(changed)])
        return parked, released

    # -- reads ----------------------------------------------------------------------------------------

    def get(self, key: str) -> R | None:
        """One row by key, or None."""

        def do(conn: psycopg.Connection[TupleRow]) -> R | None:
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in self.columns)
            try:
                values = conn.execute(
                    sql.SQL("SELECT {} FROM {} WHERE {} = %s").format(
                        cols, self._t(), sql.Identifier(self.key_column)
                    ),
                    (key,),
                ).fetchone()
            except psycopg.errors.UndefinedTable:  # no worker created it yet: empty (readers do no DDL)
                return None
            return None if values is None else self.from_db(values)

        result: R | None = self._run("get", do)
        return result

    def versions(self, keys: Sequence[str]) -> dict[str, int]:
        """The version of each of `keys` that has a row (one query however many keys: read-your-writes waits)."""

        def do(conn: psycopg.Connection[TupleRow]) -> dict[str, int]:
            cur = conn.execute(
                sql.SQL("SELECT {}, version FROM {} WHERE {} = ANY(%s)").format(
                    sql.Identifier(self.key_column), self._t(), sql.Identifier(self.key_column)
                ),
                (list(keys),),
            )
            return {str(key): int(version) for key, version in cur.fetchall()}

        result: dict[str, int] = self._run("versions", do) if keys else {}
        return result

    def rows(self) -> list[R]:
        """Every row, by key."""

        def do(conn: psycopg.Connection[TupleRow]) -> list[R]:
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in self.columns)
            try:
                cur = conn.execute(
                    sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
                        cols, self._t(), sql.Identifier(self.key_column)
                    )
                )
            except psycopg.errors.UndefinedTable:
                return []
            return [self.from_db(v) for v in cur.fetchall()]

        result: list[R] = self._run("rows", do)
        return result

    def entries(self, chunk: int = ENTRY_CHUNK) -> Iterator[Entry]:
        """Every row by key, `chunk` rows per query (keyset pages, each its own short read: no long transaction
        holds back the live writers). Keys compare in byte order (COLLATE "C"), which for UTF-8 is the code-point
        order Python sorts strings in, whatever the database's collation."""
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in self.columns)
        key = sql.Identifier(self.key_column)
        first = sql.SQL('SELECT {} FROM {} ORDER BY {} COLLATE "C" LIMIT %s').format(cols, self._t(), key)
        after = sql.SQL('SELECT {} FROM {} WHERE {} COLLATE "C" > %s ORDER BY {} COLLATE "C" LIMIT %s').format(
            cols, self._t(), key, key
        )

        def page(last: str | None) -> list[Any]:
            def do(conn: psycopg.Connection[TupleRow]) -> list[Any]:
                try:
                    cur = conn.execute(first, (chunk,)) if last is None else conn.execute(after, (last, chunk))
                except psycopg.errors.UndefinedTable:
                    return []
                return cur.fetchall()

            rows: list[Any] = self._run("entries", do)
            return rows

        last: str | None = None
        while True:
            rows = page(last)
            for values in rows:
                row = self.from_db(values)
                yield Entry((str(values[0]),), str(values[0]), int(values[self.columns.index("version")]),
                            self.row_json(row))
            if len(rows) < chunk:
                return
            last = str(rows[-1][0])

    def count(self) -> int:
        """Number of rows."""

        def do(conn: psycopg.Connection[TupleRow]) -> int:
            try:
                row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self._t())).fetchone()
            except psycopg.errors.UndefinedTable:
                return 0
            return int(row[0]) if row else 0

        result: int = self._run("count", do)
        return result

    def holds(self) -> list[dict[str, Any]]:
        """The aggregates held back now: the held event, why, and how many events are parked behind it."""

        def do(conn: psycopg.Connection[TupleRow]) -> list[dict[str, Any]]:
            cur = conn.execute(
                sql.SQL(
                    "SELECT h.aggregate_id, h.event_id::text, h.version, h.reason, "
                    "(SELECT count(*) FROM {} p WHERE p.aggregate_id = h.aggregate_id) "
                    "FROM {} h ORDER BY h.aggregate_id"
                ).format(self._t("_parked"), self._t("_holds"))
            )
            return [
                {"aggregate_id": a, "event_id": e, "version": v, "reason": r, "parked": int(n)}
                for a, e, v, r, n in cur.fetchall()
            ]

        result: list[dict[str, Any]] = self._run("holds", do)
        return result

    def snapshot(self) -> list[dict[str, Any]]:
        return [self.row_json(r) for r in self.rows()]


T = TypeVar("T")


def _released(fn: Callable[[Event], T], event: Event, behind: dict[str, str]) -> T:
    """fn(event); a parked event that cannot be applied on release fails the held event that released it."""
    try:
        return fn(event)
    except PermanentSinkError as exc:
        held = behind.get(event.event_id)
        if held is None:
            raise
        raise PermanentSinkError(
            f"event {event.event_id} (version {event.version}), parked behind {held}, cannot be applied: {exc}",
            event_id=held,
        ) from exc
