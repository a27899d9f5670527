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


def cassandra_pointer(session: Session, read_model: str, namespace: str) -> str | None:
    """The keyspace `namespace` of `read_model` points to, or None (no pointer: the keyspace is the namespace)."""
    try:
        rows = session.execute(
            f"SELECT physical FROM {META_KEYSPACE}.active_namespace WHERE read_model = %s AND namespace = %s",
            (read_model, namespace),
        )
    except InvalidRequest:  # no meta keyspace/table yet: nothing was ever swapped
        return None
    row = rows.one()
    return None if row is None else str(row.physical)


def set_cassandra_pointer(session: Session, read_model: str, namespace: str, physical: str) -> None:
    """Point `namespace` of `read_model` at keyspace `physical` (one write: the swap)."""
    check_namespace(physical)
    session.execute(
        f"CREATE KEYSPACE IF NOT EXISTS {META_KEYSPACE} WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
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
