"""Sink namespaces: shadows for `--rebuild`, the atomic swap into the live namespace, and the pointers readers resolve.

A read model lives in a *namespace* (Postgres schema, Neo4j label prefix, Cassandra keyspace). `cdcflow replay
--rebuild` builds the model again into a fresh *shadow* namespace, then swaps it in, so readers see either the old
model or the complete new one, never a half-built one. How the swap is atomic depends on the store:

- Postgres (`order_view`, `stock_view`): several read models share one schema, so whole schemas are not renamed;
  the read model's own tables are moved instead, in ONE transaction (DDL is transactional in Postgres):
  live tables -> a retired schema, shadow tables -> the live schema, retired and shadow schemas dropped. Table
  names do not change, so readers and live workers need no pointer; the transaction waits for in-flight writes.
- Neo4j (`purchase_graph`): in ONE write transaction, the live nodes are deleted, the shadow relationships are
  recreated with the live type (relationship types are immutable) and the shadow nodes relabelled. No pointer
  either; the cost is one transaction the size of the model (fine for the sizes a single Neo4j serves here).
- Cassandra (`clickstream`): keyspaces cannot be renamed and copying is not atomic, so the live namespace is a
  *pointer*: the table `cdcflow_meta.active_namespace (read_model, namespace) -> physical keyspace`, kept in
  Cassandra itself so the clickstream model depends on no other store. No row means "the keyspace is the
  namespace". The swap is one write of that row. `ClickstreamSink` resolves it for its reads and writes and
  re-reads it every `POINTER_TTL_SECONDS`, so a running live worker follows a swap within seconds; the replay
  waits `replay_swap_grace_seconds` before it catches up and drops the retired keyspace.

Readers (the query engine, the read API) call `active_namespace()` to learn where a model physically lives, or
simply use the sinks' own read methods, which already resolve it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from neo4j import ManagedTransaction
from psycopg import sql

from cdc.connect import cassandra_replication, cassandra_session, neo4j_driver, postgres_connect
from cdc.logs import get_logger
from cdc.settings import Settings
from sinks import registry
from sinks.base import Sink, check_namespace
from sinks.clickstream import ClickstreamSink
from sinks.pointers import cassandra_pointer, set_cassandra_pointer
from sinks.postgres import PostgresFoldSink
from sinks.purchase_graph import PurchaseGraphSink

log = get_logger(__name__)

_MAX_NAMESPACE = 41  # sinks.base.check_namespace


def shadow_namespace(namespace: str) -> str:
    """A fresh, valid namespace to rebuild `namespace` into: `<namespace>_r<8 hex>` (shortened if needed)."""
    suffix = f"_r{uuid.uuid4().hex[:8]}"
    return check_namespace(namespace[: _MAX_NAMESPACE - len(suffix)] + suffix)


def active_namespace(settings: Settings, read_model: str, namespace: str | None = None) -> str:
    """Where `read_model`'s `namespace` (default: the live one) physically lives, for readers.

    Postgres and Neo4j swaps are physical, so that is the namespace itself; for Cassandra it is the pointer's
    target. Opens a Cassandra session: call it once and keep the answer for a few seconds, not per query.
    """
    ns = check_namespace(namespace or settings.sink_namespace)
    if registry.read_model(read_model).store != "cassandra":
        return ns
    session = cassandra_session(settings)
    try:
        return cassandra_pointer(session, read_model, ns) or ns
    finally:
        session.cluster.shutdown()


# -- swaps ----------------------------------------------------------------------------------------------


@dataclass
class Swap:
    """A swap done: what the live namespace now holds, and how to clean up what it replaced."""

    live: str
    physical: str
    retired: str | None
    #: Seconds live writers may still write to the replaced data (pointer caches); wait before `retire`.
    grace_seconds: float
    retire: Callable[[], None]


def swap_in(settings: Settings, live: Sink, shadow: Sink) -> Swap:
    """Make `shadow`'s complete model the live one, atomically for readers. `shadow` is consumed."""
    if type(live) is not type(shadow) or live.namespace == shadow.namespace:
        raise ValueError(f"cannot swap {shadow!r} into {live!r}")
    if isinstance(live, PostgresFoldSink):
        return _swap_postgres(settings, live, shadow)
    if isinstance(live, PurchaseGraphSink) and isinstance(shadow, PurchaseGraphSink):
        return _swap_neo4j(settings, live, shadow)
    if isinstance(live, ClickstreamSink):
        return _swap_cassandra(settings, live, shadow)
    raise ValueError(f"no swap for {type(live).__name__}")


def _noop() -> None:
    return None


def _swap_postgres(settings: Settings, live: Sink, shadow: Sink) -> Swap:
    assert isinstance(live, PostgresFoldSink)
    retired = f"{live.namespace}_retired_{uuid.uuid4().hex[:8]}"
    tables = live.tables
    with postgres_connect(settings, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL lock_timeout = '60s'")
        # the same lock as PostgresFoldSink.setup(): no setup of the live schema runs meanwhile
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"cdcflow-setup-{live.namespace}",))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(live.namespace)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(retired)))
        for table in tables:
            conn.execute(
                sql.SQL("ALTER TABLE IF EXISTS {}.{} SET SCHEMA {}").format(
                    sql.Identifier(live.namespace), sql.Identifier(table), sql.Identifier(retired)
                )
            )
            conn.execute(
                sql.SQL("ALTER TABLE {}.{} SET SCHEMA {}").format(
                    sql.Identifier(shadow.namespace), sql.Identifier(table), sql.Identifier(live.namespace)
                )
            )
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(retired)))
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(shadow.namespace)))
    log.info("swapped", read_model=live.name, store="postgres", live=live.namespace, shadow=shadow.namespace)
    return Swap(live.namespace, live.namespace, None, 0.0, _noop)


def _swap_neo4j(settings: Settings, live: Sink, shadow: Sink) -> Swap:
    assert isinstance(live, PurchaseGraphSink) and isinstance(shadow, PurchaseGraphSink)
    live.setup()  # the live constraints must exist (schema changes cannot share the data transaction)
    lr, sr = live.purchased, shadow.purchased
    # Names are ours (validated namespaces), never user input: labels cannot be query parameters.
    labels = [(live.customer, shadow.customer), (live.product, shadow.product), (live.held, shadow.held),
              (live.parked, shadow.parked)]
    statements = [
        "MATCH (n) WHERE " + " OR ".join(f"n:`{lab}`" for lab, _ in labels) + " DETACH DELETE n",
        f"MATCH (a)-[r:`{sr}`]->(b) CREATE (a)-[n:`{lr}`]->(b) SET n = properties(r) DELETE r",
    ] + [f"MATCH (n:`{s}`) REMOVE n:`{s}` SET n:`{lab}`" for lab, s in labels]

    def work(tx: ManagedTransaction) -> None:
        for text in statements:
            tx.run(text).consume()  # type: ignore[arg-type]

    driver = neo4j_driver(settings)
    try:
        with driver.session() as session:
            session.execute_write(work)
    finally:
        driver.close()
    shadow.drop()  # now only its constraints and indexes are left
    log.info("swapped", read_model=live.name, store="neo4j", live=live.namespace, shadow=shadow.namespace)
    return Swap(live.namespace, live.namespace, None, 0.0, _noop)


def _swap_cassandra(settings: Settings, live: Sink, shadow: Sink) -> Swap:
    session = cassandra_session(settings)
    try:
        previous = cassandra_pointer(session, live.name, live.namespace) or live.namespace
        set_cassandra_pointer(session, live.name, live.namespace, shadow.namespace,
                              replication=cassandra_replication(settings))
    finally:
        session.cluster.shutdown()
    log.info("swapped", read_model=live.name, store="cassandra", live=live.namespace, physical=shadow.namespace,
             retired=previous)

    def retire() -> None:
        if previous == shadow.namespace:
            return
        s = cassandra_session(settings)
        try:
            s.execute(f"DROP KEYSPACE IF EXISTS {check_namespace(previous)}")
        finally:
            s.cluster.shutdown()
        log.info("retired", read_model=live.name, store="cassandra", keyspace=previous)

    return Swap(live.namespace, shadow.namespace, previous, settings.replay_swap_grace_seconds, retire)
