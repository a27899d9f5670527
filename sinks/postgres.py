"""Shared machinery of the Postgres read models: one row per aggregate, folded from its events.

A subclass gives the table, how to read/write a row, and a pure fold `(row | None, event) -> row | None`
(None: the event changes nothing). `write` then, in ONE transaction per batch:
1. locks the batch's existing rows (`SELECT … FOR UPDATE`, in key order so two workers cannot deadlock),
2. drops unversioned events already recorded in the `<table>_processed` table and records the new ones,
3. folds the batch in Python (versioned events at or below the row's version change nothing),
4. upserts the changed rows (`executemany`, pipelined), guarded by version.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Generic, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from cdc.connect import postgres_connect
from cdc.event import Event
from cdc.logs import get_logger
from cdc.settings import Settings
from sinks.base import PermanentSinkError, Sink, TransientSinkError

R = TypeVar("R")

log = get_logger(__name__)


def classify_postgres_error(exc: BaseException) -> Exception:
    """Map a psycopg error to a transient (retry) or permanent (dead letter) sink error."""
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return TransientSinkError(f"postgres unavailable: {exc}")
    if isinstance(exc, psycopg.errors.QueryCanceled | psycopg.errors.LockNotAvailable):
        return TransientSinkError(f"postgres timeout: {exc}")
    if isinstance(exc, psycopg.errors.InsufficientPrivilege | psycopg.errors.InvalidAuthorizationSpecification
                  | psycopg.errors.ReadOnlySqlTransaction):
        # The store refuses *us* (DESIGN: "down", not a bad event): retry until an operator fixes the grants.
        return TransientSinkError(f"postgres refused cdcflow's user: {exc}")
    return PermanentSinkError(f"postgres rejected the write: {type(exc).__name__}: {exc}")


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
        except (psycopg.Error, OSError) as exc:
            err: Exception = TransientSinkError(f"postgres unreachable: {exc}")
            if isinstance(exc, psycopg.Error):
                err = classify_postgres_error(exc)
            if isinstance(err, TransientSinkError):
                self._discard()
            log.debug("postgres_error", sink=self.name, what=what, error=str(exc))
            raise err from exc

    def close(self) -> None:
        self._discard()

    # -- names ----------------------------------------------------------------------------------------

    def _t(self, suffix: str = "") -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.namespace), sql.Identifier(self.table + suffix))

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

        self._run("setup", do)

    def drop(self) -> None:
        def do(conn: psycopg.Connection[TupleRow]) -> None:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.namespace)))

        self._run("drop", do)

    # -- write ----------------------------------------------------------------------------------------

    def write(self, batch: Sequence[Event]) -> None:
        if not batch:
            return
        keyed = [(self.key_of(e), e) for e in batch]
        self._run("write", lambda conn: self._write(conn, keyed))

    def _write(self, conn: psycopg.Connection[TupleRow], keyed: list[tuple[str, Event]]) -> None:
        keys = sorted({k for k, _ in keyed})
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in self.columns)
        with conn.transaction():
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
                new = self.fold(current.get(key), event)
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

    def snapshot(self) -> list[dict[str, Any]]:
        return [self.row_json(r) for r in self.rows()]
