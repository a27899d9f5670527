"""Connection helpers: the one place that knows how to reach Postgres, Cassandra and Neo4j.

Postgres and Neo4j take credentials and TLS through their URIs (`sslmode=verify-full&sslrootcert=...`,
`neo4j+s://`; a Neo4j whose certificate a private CA signed: `neo4j_ca_file`); Cassandra through settings:
PlainTextAuthProvider, a TLS context, the local data centre, read/write consistency levels and the replication
of the keyspaces cdcflow creates.
"""

from __future__ import annotations

import ssl
from typing import Any

import psycopg
from cassandra import ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import DCAwareRoundRobinPolicy
from neo4j import Driver, GraphDatabase, TrustCustomCAs
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from cdc.settings import Settings
from cdc.tls import client_context

#: Seconds to wait for a TCP/handshake before giving up: a down server must fail fast so callers can retry.
CONNECT_TIMEOUT = 5.0

#: The execution profile of Cassandra reads (consistency `cassandra_read_consistency`); the default profile
#: writes (consistency `cassandra_write_consistency`).
CASSANDRA_READ_PROFILE = "cdcflow-read"


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
    def profile(consistency: str) -> ExecutionProfile:
        return ExecutionProfile(
            load_balancing_policy=DCAwareRoundRobinPolicy(local_dc=settings.cassandra_local_dc),
            request_timeout=10.0,
            consistency_level=ConsistencyLevel.name_to_value[consistency],
        )

    credentials = settings.cassandra_auth
    return Cluster(
        contact_points=settings.cassandra_contact_points,
        protocol_version=5,
        execution_profiles={
            EXEC_PROFILE_DEFAULT: profile(settings.cassandra_write_consistency),
            CASSANDRA_READ_PROFILE: profile(settings.cassandra_read_consistency),
        },
        auth_provider=None if credentials is None else PlainTextAuthProvider(*credentials),
        ssl_context=cassandra_ssl_context(settings),
        connect_timeout=connect_timeout,
        control_connection_timeout=connect_timeout,
        schema_metadata_enabled=metadata,
        token_metadata_enabled=metadata,
    )


def cassandra_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The client TLS context for Cassandra (None: plaintext). Verifies the node against the CA (or the
    system's), and its host name unless `cassandra_tls_check_hostname` is off; presents a client certificate
    when one is configured."""
    if not settings.cassandra_tls:
        return None
    return client_context(settings.cassandra_tls_ca_file, settings.cassandra_tls_cert_file,
                          settings.cassandra_tls_key_file, settings.cassandra_tls_check_hostname)


def cassandra_replication(settings: Settings) -> str:
    """The CQL replication map of the keyspaces cdcflow creates (`cassandra_replication`), e.g.
    `{'class': 'NetworkTopologyStrategy', 'dc1': 3}`."""
    replication = settings.cassandra_replication
    if "class" not in replication:
        raise ValueError("CDCFLOW_CASSANDRA_REPLICATION needs a 'class' (SimpleStrategy, NetworkTopologyStrategy)")
    # CQL string literals: single quotes, doubled inside; JSON gives the map its shape.
    items = ", ".join(
        f"{_cql_string(str(k))}: {_cql_string(str(v))}" for k, v in replication.items()
    )
    return "{" + items + "}"


def _cql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def cassandra_session(settings: Settings, keyspace: str | None = None) -> Session:
    """A connected Session (optionally bound to `keyspace`); shut down with `session.cluster.shutdown()`."""
    cluster = cassandra_cluster(settings)
    try:
        return cluster.connect(keyspace)
    except Exception:
        cluster.shutdown()
        raise


def neo4j_driver(settings: Settings) -> Driver:
    """A Neo4j driver for the configured Bolt URI; close it when done. TLS by scheme (`bolt+s://`, `neo4j+s://`:
    the system's CAs), or with `neo4j_ca_file` (a `bolt://` / `neo4j://` URI): verified against that CA."""
    tls: dict[str, Any] = {}
    if settings.neo4j_ca_file is not None:
        tls = {"encrypted": True, "trusted_certificates": TrustCustomCAs(str(settings.neo4j_ca_file))}
    return GraphDatabase.driver(
        settings.neo4j_uri,
        auth=settings.neo4j_auth,
        connection_timeout=CONNECT_TIMEOUT,
        connection_acquisition_timeout=2 * CONNECT_TIMEOUT,
        **tls,
    )
