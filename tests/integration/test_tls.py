"""TLS on the hops: a client connects with the CA that signed the server's certificate, and refuses (or is
refused) without it. A throwaway CA and server certificate are made per test module (tests/tls_support.py, the
`tls` and `other_ca` fixtures). Postgres and Kafka here; MongoDB and Neo4j in test_tls_stores.py."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from pydantic import SecretStr

from cdc.connect import postgres_connect
from cdc.credentials import POSTGRES_ADMIN, read_secrets
from cdc.kafka import kafka_config
from cdc.settings import Settings
from infra.servers.kafka import KafkaServer
from infra.servers.postgres import PostgresServer
from tests.helpers import free_port, private_server, unique
from tests.tls_support import Tls

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_postgres(settings: Settings, tls: Tls) -> Iterator[PostgresServer]:
    """A private Postgres with ssl=on that accepts TCP connections over TLS only (hostssl)."""
    server = PostgresServer(settings, instance=unique("postgres_tls"), port=free_port(),
                            tls=(tls.cert_pem, tls.key_pem))
    server.ensure_running()
    try:
        yield server
    finally:
        server.stop()
        cluster = server.link.resolve()
        shutil.rmtree(cluster, ignore_errors=True)
        shutil.rmtree(server.data_dir, ignore_errors=True)


def _dsn(server: PostgresServer, settings: Settings, **options: str) -> Settings:
    password = read_secrets(settings.data_dir, "postgres")[POSTGRES_ADMIN]
    query = "&".join(f"{k}={v}" for k, v in options.items())
    dsn = f"postgresql://{POSTGRES_ADMIN}:{password}@127.0.0.1:{server.port}/postgres?{query}"
    return settings.model_copy(update={"postgres_dsn_override": SecretStr(dsn)})


def test_postgres_over_tls_with_the_ca(tls_postgres: PostgresServer, settings: Settings, tls: Tls) -> None:
    s = _dsn(tls_postgres, settings, sslmode="verify-full", sslrootcert=str(tls.ca_file))
    with postgres_connect(s) as conn:
        row = conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row is not None and row[0] is True and row[1].startswith("TLS")


def test_postgres_client_refuses_a_server_its_ca_did_not_sign(
    tls_postgres: PostgresServer, settings: Settings, other_ca: Tls
) -> None:
    s = _dsn(tls_postgres, settings, sslmode="verify-full", sslrootcert=str(other_ca.ca_file))
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        postgres_connect(s)


def test_postgres_refuses_a_client_without_tls(tls_postgres: PostgresServer, settings: Settings) -> None:
    s = _dsn(tls_postgres, settings, sslmode="disable")
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        postgres_connect(s)


@pytest.fixture(scope="module")
def tls_kafka(settings: Settings, tls: Tls) -> Iterator[KafkaServer]:
    """A private broker whose client listener is SASL_SSL."""
    server = KafkaServer(settings, instance=unique("kafka_tls"), port=free_port(), controller_port=free_port(),
                         tls=(tls.cert_pem, tls.key_pem, tls.ca_pem))
    with private_server(server):
        yield server


def _list_topics(s: Settings) -> int:
    admin = AdminClient(kafka_config(s, **{"socket.timeout.ms": 3000}))
    return len(admin.list_topics(timeout=10).brokers)


def test_kafka_over_sasl_ssl_with_the_ca(tls_kafka: KafkaServer, tls: Tls) -> None:
    s = tls_kafka.client_settings().model_copy(update={"kafka_ssl_ca_file": tls.ca_file})
    assert s.kafka_protocol == "SASL_SSL"
    assert _list_topics(s) == 1


def test_kafka_client_refuses_a_broker_its_ca_did_not_sign(tls_kafka: KafkaServer, other_ca: Tls) -> None:
    s = tls_kafka.client_settings().model_copy(update={"kafka_ssl_ca_file": other_ca.ca_file})
    with pytest.raises(KafkaException):
        _list_topics(s)


def test_kafka_broker_refuses_a_client_without_tls(tls_kafka: KafkaServer) -> None:
    s = tls_kafka.client_settings().model_copy(update={"kafka_security_protocol": "SASL_PLAINTEXT"})
    with pytest.raises(KafkaException):
        _list_topics(s)


def test_tls_files_are_private(tls_kafka: KafkaServer, tls_postgres: PostgresServer) -> None:
    for path in (tls_kafka.data_dir / "tls-keystore.pem", tls_postgres.link.resolve() / "server.key"):
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert Path(tls_kafka.data_dir / "server.properties").stat().st_mode & 0o777 == 0o600
