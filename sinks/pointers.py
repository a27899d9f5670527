"""Cassandra namespace pointers: which keyspace a read model's namespace lives in after a `replay --rebuild`.

Keyspaces cannot be renamed, so the live namespace of the clickstream is a pointer: the table
`cdcflow_meta.active_namespace (read_model, namespace) -> physical keyspace`, kept in Cassandra itself. No row
means "the keyspace is the namespace". The swap (sinks/namespaces.py) is one write of that row; the sink
re-reads it every `POINTER_TTL_SECONDS`.
"""

from __future__ import annotations

import contextlib

from cassandra import InvalidRequest
from cassandra.cluster import Session

from sinks.base import check_namespace

#: Cassandra keyspace holding the namespace pointers.
META_KEYSPACE = "cdcflow_meta"
#: How long a sink trusts a pointer it read before reading it again.
POINTER_TTL_SECONDS = 5.0


class BadPointerError(ValueError):
    """A pointer row holds something that is not a keyspace name cdcflow could have written."""


def cassandra_pointer(session: Session, read_model: str, namespace: str) -> str | None:
    """The keyspace `namespace` of `read_model` points to, or None (no pointer: the keyspace is the namespace).

    The value is read back from the database and goes into DDL and queries as an identifier: it is checked
    like every namespace (BadPointerError), so a tampered row cannot inject CQL.
    """
    try:
        rows = session.execute(
            f"SELECT physical FROM {META_KEYSPACE}.active_namespace WHERE read_model = %s AND namespace = %s",
            (read_model, namespace),
        )
    except InvalidRequest:  # no meta keyspace/table yet: nothing was ever swapped
        return None
    row = rows.one()
    if row is None:
        return None
    try:
        return check_namespace(str(row.physical))
    except ValueError:
        raise BadPointerError(
            f"{META_KEYSPACE}.active_namespace points {read_model}/{namespace} at {str(row.physical)[:80]!r}, "
            "which is not a valid keyspace name: fix or delete that row"
        ) from None


def set_cassandra_pointer(
    session: Session, read_model: str, namespace: str, physical: str, *, replication: str
) -> None:
    """Point `namespace` of `read_model` at keyspace `physical` (one write: the swap). `replication` is the CQL
    replication map of the pointers' keyspace when it has to be created (cdc.connect.cassandra_replication)."""
    check_namespace(physical)
    session.execute(f"CREATE KEYSPACE IF NOT EXISTS {META_KEYSPACE} WITH replication = {replication}")
    session.execute(
        f"CREATE TABLE IF NOT EXISTS {META_KEYSPACE}.active_namespace ("
        "read_model text, namespace text, physical text, switched_at timestamp, "
        "PRIMARY KEY ((read_model, namespace)))"
    )
    session.execute(
        f"INSERT INTO {META_KEYSPACE}.active_namespace (read_model, namespace, physical, switched_at) "
        "VALUES (%s, %s, %s, toTimestamp(now()))",
        (read_model, namespace, physical),
    )


def clear_cassandra_pointer(session: Session, read_model: str, namespace: str) -> None:
    """Remove the pointer of `namespace` (the keyspace is the namespace again)."""
    with contextlib.suppress(InvalidRequest):
        session.execute(
            f"DELETE FROM {META_KEYSPACE}.active_namespace WHERE read_model = %s AND namespace = %s",
            (read_model, namespace),
        )
