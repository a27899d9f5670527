"""TLS to MongoDB (SecantusDB) and Neo4j, as test_tls.py does for Postgres and Kafka: a private server with
authentication on that accepts TLS only, a throwaway CA (the `tls` fixture) that signed its certificate, another
(`other_ca`) that did not. cdcflow's own clients, configured as an operator would (MONGO_URI with
`tls=true&tlsCAFile=...`; NEO4J_URI with NEO4J_CA_FILE or a `+s`/`+ssc` scheme), do real work with the right CA,
refuse the server with the other, and are refused without TLS."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from neo4j.exceptions import ServiceUnavailable
from pymongo.errors import ServerSelectionTimeoutError

from cdc.connect import neo4j_driver
from cdc.credentials import role_credentials
from cdc.mongo import client_options, mongo_client
from cdc.outbox import OUTBOX_COLLECTION
from cdc.outbox_writer import OutboxWriter
from cdc.schemas import TOPIC_CLICKSTREAM
from cdc.settings import Settings, load_settings
from cdc.stream_reader import ChangeReader, Fetcher
from infra.servers.mongo import MongoServer
from infra.servers.neo4j import Neo4jServer
from tests.helpers import free_port, private_server, unique
from tests.streams_support import page_view
from tests.tls_support import Tls

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_mongo(settings: Settings, tls: Tls) -> Iterator[MongoServer]:
    """A private SecantusDB with --auth that accepts TLS connections only."""
    with private_server(MongoServer(settings, instance=unique("mongo_tls"), port=free_port(),
                                    tls=(tls.cert_pem, tls.key_pem, tls.ca_pem))) as server:
        yield server


def _mongo_uri(server: MongoServer, settings: Settings, options: str) -> Settings:
    """Settings whose MONGO_URI an operator wrote: the admin user, and `options` (the TLS ones)."""
    credentials = role_credentials(settings.data_dir, "mongo", "admin")
    assert credentials is not None
    user, password = (quote_plus(c) for c in credentials)
    uri = f"mongodb://{user}:{password}@127.0.0.1:{server.port}/?directConnection=true&authSource=admin&{options}"
    return settings.model_copy(update={"mongo_uri_override": uri})


def test_mongo_over_tls_with_the_ca(tls_mongo: MongoServer, settings: Settings, tls: Tls) -> None:
    """An outbox write (the services' path) and the change stream that carries it (the tailer's fetcher
    process, which gets the URI over its pipe), both over TLS."""
    s = _mongo_uri(tls_mongo, settings, f"tls=true&tlsCAFile={quote(str(tls.ca_file))}")
    database = unique("tls_outbox")
    client = mongo_client(s)
    fetcher = Fetcher(s.mongo_uri, client_options(s), name=database)
    try:
        outbox = client[database][OUTBOX_COLLECTION]
        stream = fetcher.open(database, OUTBOX_COLLECTION, [], batch_size=100, max_await_ms=200,
                              codec_options=outbox.codec_options)
        event = page_view(TOPIC_CLICKSTREAM, "u-tls", "p-tls", datetime.now(UTC))
        OutboxWriter(client, database).write([event])
        reader, seen = ChangeReader(stream), None
        deadline = time.monotonic() + 30
        while seen is None and time.monotonic() < deadline:
            for item in reader.take(100, 1.0):
                if isinstance(item, dict) and item["operationType"] == "insert":
                    seen = item["documentKey"]["_id"]
        assert seen == event.event_id
    finally:
        fetcher.stop()
        client.close()


def test_mongo_client_refuses_a_server_its_ca_did_not_sign(
    tls_mongo: MongoServer, settings: Settings, other_ca: Tls
) -> None:
    s = _mongo_uri(tls_mongo, settings, f"tls=true&tlsCAFile={quote(str(other_ca.ca_file))}")
    with mongo_client(s) as client, pytest.raises(ServerSelectionTimeoutError, match="CERTIFICATE_VERIFY_FAILED"):
        client.admin.command("ping")


def test_mongo_refuses_a_client_without_tls(tls_mongo: MongoServer, settings: Settings) -> None:
    s = _mongo_uri(tls_mongo, settings, "tls=false")
    with mongo_client(s) as client, pytest.raises(ServerSelectionTimeoutError):
        client.admin.command("ping")


@pytest.fixture(scope="module")
def tls_neo4j(settings: Settings, tls: Tls) -> Iterator[Neo4jServer]:
    """A private Neo4j (auth on) whose Bolt connector requires TLS, with a small heap."""
    own = settings.model_copy(update={"neo4j_bolt_port": free_port()})
    with private_server(Neo4jServer(own, instance=unique("neo4j_tls"), tls=(tls.cert_pem, tls.key_pem, tls.ca_pem),
                                    max_heap="256m")) as server:
        yield server


def _neo4j_uri(server: Neo4jServer, scheme: str, ca_file: Path | None = None) -> Settings:
    """Settings whose NEO4J_URI (and NEO4J_CA_FILE) an operator set, with the server's user and password."""
    auth = server.settings.neo4j_auth
    assert auth is not None
    return load_settings(**{
        "NEO4J_URI": f"{scheme}://127.0.0.1:{server.settings.neo4j_bolt_port}",
        "NEO4J_USER": auth[0], "NEO4J_PASSWORD": auth[1], "NEO4J_CA_FILE": ca_file,
    })


def _neo4j_query(s: Settings) -> bool:
    """A write and a read back in one transaction on `s`'s server (nothing is committed)."""
    with neo4j_driver(s) as driver, driver.session() as session, session.begin_transaction() as tx:
        record = tx.run("CREATE (n:TlsProbe {at: $at}) RETURN n.at = $at AS ok", at=time.time()).single(strict=True)
        tx.rollback()
        return bool(record["ok"])


@pytest.mark.parametrize("scheme", ["bolt", "neo4j"])
def test_neo4j_over_tls_with_the_ca_file(tls_neo4j: Neo4jServer, tls: Tls, scheme: str) -> None:
    assert _neo4j_query(_neo4j_uri(tls_neo4j, scheme, tls.ca_file))


def test_neo4j_over_tls_with_the_system_trust_store(
    tls_neo4j: Neo4jServer, tls: Tls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`neo4j+s://` verifies against the system's CAs: here OpenSSL's, pointed at the test CA."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_file))
    assert _neo4j_query(_neo4j_uri(tls_neo4j, "neo4j+s"))


def test_neo4j_self_signed_scheme_accepts_any_certificate(tls_neo4j: Neo4jServer) -> None:
    assert _neo4j_query(_neo4j_uri(tls_neo4j, "bolt+ssc"))


def test_neo4j_client_refuses_a_server_its_ca_did_not_sign(tls_neo4j: Neo4jServer, other_ca: Tls) -> None:
    with pytest.raises(ServiceUnavailable, match="SSLCertVerificationError"):
        _neo4j_query(_neo4j_uri(tls_neo4j, "bolt", other_ca.ca_file))


def test_neo4j_refuses_a_client_without_tls(tls_neo4j: Neo4jServer) -> None:
    with pytest.raises(ServiceUnavailable):
        _neo4j_query(_neo4j_uri(tls_neo4j, "bolt"))



def test_tls_files_are_private(tls_mongo: MongoServer, tls_neo4j: Neo4jServer) -> None:
    for path in (tls_mongo.data_dir / "tls-key.pem", tls_neo4j.tls_dir / "private.key"):
        assert path.stat().st_mode & 0o777 == 0o600, path
