"""Connection helpers: the one place that knows how to reach Postgres, Cassandra and Neo4j."""

from __future__ import annotations

import psycopg
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import DCAwareRoundRobinPolicy
from neo4j import Driver, GraphDatabase
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from cdc.settings import Settings

#: Seconds to wait for a TCP/handshake before giving up: a down server must fail fast so callers can retry.
CONNECT_TIMEOUT = 5.0

#: SimpleSnitch (the local server) puts every node in this data centre.
CASSANDRA_LOCAL_DC = "datacenter1"


def postgres_connect(
    settings: Settings, autocommit: bool = True, dbname: str | None = None
) -> psycopg.Connection[TupleRow]:
    """Open a Postgres connection to the configured server (optionally another database on it)."""
    params = conninfo_to_dict(settings.postgres_dsn)
    # A timeout given in the DSN is the operator's choice; only fill it in when absent.
    params.setdefault("connect_timeout", int(CONNECT_TIMEOUT))
    if dbname is not None:
        params["dbname"] = dbname
    return psycopg.connect(make_conninfo("", **params), autocommit=autocommit)


def cassandra_cluster(
    settings: Settings, *, connect_timeout: float = CONNECT_TIMEOUT, metadata: bool = True
) -> Cluster:
    """A Cluster for the configured contact points; call `.shutdown()` when done.

    `metadata=False` skips schema/token discovery, for one-shot probes such as health checks.
    """
    # protocol 5 and an explicit local DC avoid the driver's downgrade and "no local_dc" warnings.
    profile = ExecutionProfile(
        load_balancing_policy=DCAwareRoundRobinPolicy(local_dc=CASSANDRA_LOCAL_DC),
        request_timeout=10.0,
    )
    return Cluster(
        contact_points=settings.cassandra_contact_points,
        protocol_version=5,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=connect_timeout,
        control_connection_timeout=connect_timeout,
        schema_metadata_enabled=metadata,
        token_metadata_enabled=metadata,
    )


def cassandra_session(settings: Settings, keyspace: str | None = None) -> Session:
    """A connected Session (optionally bound to `keyspace`); shut down with `session.cluster.shutdown()`."""
    cluster = cassandra_cluster(settings)
    try:
        return cluster.connect(keyspace)
    except Exception:
        cluster.shutdown()
        raise


def neo4j_driver(settings: Settings) -> Driver:
    """A Neo4j driver for the configured Bolt URI (no auth for the local server); close it when done."""
    return GraphDatabase.driver(
        settings.neo4j_uri,
        auth=settings.neo4j_auth,
        connection_timeout=CONNECT_TIMEOUT,
        connection_acquisition_timeout=2 * CONNECT_TIMEOUT,
    )
