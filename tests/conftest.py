"""Shared fixtures: settings, and the real local servers (started once per session, reused if running)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient

from cdc.logs import configure_logging
from cdc.mongo import mongo_client
from cdc.settings import Settings, load_settings
from infra.servers.base import Server
from infra.servers.mongo import MongoServer
from tests.helpers import free_port, private_server, unique
from tests.tls_support import Tls, make_tls

configure_logging("WARNING", json=False)


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The settings in force (local servers unless the environment points elsewhere)."""
    return load_settings()


def _server(settings: Settings, name: str) -> Server:
    from infra.stack import build_servers

    server = build_servers(settings, [name])[0]
    server.ensure_running()
    return server


@pytest.fixture(scope="session")
def mongo(settings: Settings) -> Server:
    """The MongoDB server (SecantusDB), running and healthy."""
    return _server(settings, "mongo")


@pytest.fixture(scope="session")
def kafka(settings: Settings) -> Server:
    """The Kafka broker, running and healthy."""
    return _server(settings, "kafka")


@pytest.fixture(scope="session")
def postgres(settings: Settings) -> Server:
    """The Postgres server, running and healthy."""
    return _server(settings, "postgres")


@pytest.fixture(scope="session")
def cassandra(settings: Settings) -> Server:
    """The Cassandra node, running and healthy."""
    return _server(settings, "cassandra")


@pytest.fixture(scope="session")
def neo4j(settings: Settings) -> Server:
    """The Neo4j server, running and healthy."""
    return _server(settings, "neo4j")


@pytest.fixture
def client(settings: Settings, mongo: Server) -> Iterator[MongoClient[dict[str, Any]]]:
    """A pooled MongoClient to the test MongoDB (the project's own helper), closed after the test."""
    c = mongo_client(settings)
    yield c
    c.close()


@pytest.fixture
def restart_after(settings: Settings) -> Iterator[list[Server]]:
    """Servers a test stops are appended here and brought back (healthy) after it, pass or fail."""
    stopped: list[Server] = []
    yield stopped
    for server in stopped:
        server.ensure_running()


@pytest.fixture
def private_mongo(settings: Settings, kafka: Server) -> Iterator[tuple[MongoServer, Settings]]:
    """A MongoDB of the test's own (to freeze with SIGSTOP or stop), and settings that point at it; thawed,
    stopped and removed afterwards."""
    with private_server(MongoServer(settings, instance=unique("mongo_private"), port=free_port())) as server:
        try:
            yield server, settings.model_copy(update={"mongo_uri_override": server.uri})
        finally:
            pid = server.process.pid()
            if pid is not None:
                os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A throwaway CA and a server certificate for 127.0.0.1 it signed (one per test module)."""
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """Another throwaway CA: a client trusting it must refuse the `tls` fixture's server."""
    return make_tls(tmp_path_factory.mktemp("other-ca"))
