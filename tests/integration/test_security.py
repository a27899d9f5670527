"""Authentication everywhere, least privilege per role, and secrets kept out of sight (issue 15).

Every local server runs with authentication: a wrong password and no password are refused. Each role gets
only what it uses: a service's MongoDB user reaches its own database only, the tailer reads the outboxes,
prunes them and writes its own state, the read API's database users read only, and the read paths do no DDL.
No generated password appears in a server's arguments or environment; the data and secrets are private.
"""

from __future__ import annotations

import hashlib
import pwd
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cassandra import AuthenticationFailed, Unauthorized
from cassandra.cluster import NoHostAvailable
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from neo4j.exceptions import AuthError, ClientError
from pydantic import SecretStr
from pymongo.errors import OperationFailure

from cdc.connect import cassandra_session, neo4j_driver, postgres_connect
from cdc.credentials import ROLE_USERS, read_secrets, secrets_dir
from cdc.dead_letters import COLLECTION as DEAD_LETTERS
from cdc.kafka import kafka_config
from cdc.mongo import mongo_client
from cdc.outbox import prune
from cdc.schemas import TOPIC_CLICKSTREAM, TOPIC_ORDERS
from cdc.settings import Settings
from infra import stack
from infra.process import pid_alive
from infra.servers.base import Server, ServerStatus
from infra.servers.postgres import PostgresServer
from sinks import queries
from sinks.pointers import BadPointerError, cassandra_pointer, set_cassandra_pointer
from sinks.queries import ReadModels
from sinks.registry import build_sink
from tests.helpers import unique
from tests.streams_support import order_lifecycle, page_view

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def all_up(settings: Settings) -> list[ServerStatus]:
    return stack.up(settings)


# -- wrong or missing credentials are refused ---------------------------------------------------------------


def test_mongo_refuses_a_wrong_password_and_no_password(settings: Settings, mongo: Server) -> None:
    port = settings.mongo_port
    for uri in (f"mongodb://cdcflow_admin:wrong@127.0.0.1:{port}/?directConnection=true&authSource=admin",
                f"mongodb://127.0.0.1:{port}/?directConnection=true"):
        client = mongo_client(settings.model_copy(update={"mongo_uri_override": uri}))
        try:
            with pytest.raises(OperationFailure) as failed:
                client["cdcflow_security"]["probe"].find_one()
            assert failed.value.code in (13, 18)  # Unauthorized (no login), AuthenticationFailed
        finally:
            client.close()


def test_postgres_refuses_a_wrong_password_and_no_password(settings: Settings, postgres: Server) -> None:
    for dsn in (f"postgresql://postgres:wrong@127.0.0.1:{settings.postgres_port}/postgres",
                f"postgresql://postgres@127.0.0.1:{settings.postgres_port}/postgres"):
        with pytest.raises(psycopg.OperationalError, match="password"):
            postgres_connect(settings.model_copy(update={"postgres_dsn_override": SecretStr(dsn)}))


def _kafka_errors(config: dict[str, Any]) -> list[KafkaError]:
    errors: list[KafkaError] = []
    admin = AdminClient({**config, "socket.timeout.ms": 3000, "error_cb": errors.append})  # type: ignore[dict-item]
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=5)
    admin.poll(1)  # serve the error callbacks
    return errors


def test_kafka_refuses_a_wrong_password_and_plaintext(settings: Settings, kafka: Server) -> None:
    errors = _kafka_errors(kafka_config(settings, **{"sasl.password": "wrong"}))
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    _kafka_errors({"bootstrap.servers": settings.kafka_bootstrap_servers})  # no SASL: disconnected


def test_cassandra_refuses_a_wrong_password_no_password_and_the_default_superuser(
    settings: Settings, cassandra: Server
) -> None:
    for update in ({"cassandra_username": "cdcflow_admin", "cassandra_password": SecretStr("wrong")},
                   {"cassandra_username": "cassandra", "cassandra_password": SecretStr("cassandra")},
                   {"role": "product"}):  # a role without a Cassandra user: no credentials at all
        with pytest.raises(NoHostAvailable) as failed:
            cassandra_session(settings.model_copy(update=update))
        errors = list(failed.value.errors.values())
        assert errors and all(isinstance(e, AuthenticationFailed) for e in errors), errors


def test_neo4j_refuses_a_wrong_password(settings: Settings, neo4j: Server) -> None:
    bad = settings.model_copy(update={"neo4j_user": "neo4j", "neo4j_password": SecretStr("wrong")})
    with neo4j_driver(bad) as driver, pytest.raises(AuthError):
        driver.verify_connectivity()
    with neo4j_driver(settings.as_role("product")) as driver, pytest.raises(ClientError):  # no credentials
        driver.verify_connectivity()


# -- each role holds only what it uses ----------------------------------------------------------------------


def test_a_service_user_reaches_its_own_database_only(settings: Settings, mongo: Server) -> None:
    order = mongo_client(settings.as_role("order"))
    try:
        marker = unique("m")
        order["order_service"]["security_probe"].insert_one({"_id": marker})
        order["order_service"]["security_probe"].delete_one({"_id": marker})
        for db in ("product_service", "clickstream_service", "cdcflow_tailer", "admin"):
            with pytest.raises(OperationFailure) as failed:
                order[db]["security_probe"].insert_one({"_id": marker})
            assert failed.value.code == 13, db
        with pytest.raises(OperationFailure):
            order["product_service"]["outbox"].find_one()
    finally:
        order.close()


def test_the_tailer_reads_and_prunes_the_outboxes_and_writes_only_its_state(
    settings: Settings, mongo: Server
) -> None:
    tailer = mongo_client(settings.as_role("tailer"))
    try:
        for db in ("product_service", "order_service", "clickstream_service"):
            outbox = tailer[db]["outbox"]
            outbox.find_one()
            with outbox.watch(max_await_time_ms=10) as stream:
                stream.try_next()
            # Retention's pruning (cdc/pruner.py) is its only write there; nothing that old exists, so it
            # removes nothing, but the server checks the privilege all the same.
            assert prune(outbox, datetime(1971, 1, 1, tzinfo=UTC)) == 0
            with pytest.raises(OperationFailure) as failed:  # it never changes an event (no marking published)
                outbox.update_one({"_id": "absent"}, {"$set": {"published": True}})
            assert failed.value.code == 13, db
            with pytest.raises(OperationFailure) as failed:  # nor writes one, nor business state
                outbox.insert_one({"_id": unique("t")})
            assert failed.value.code == 13, db
        state = tailer[settings.tailer_state_database]
        for collection in ("checkpoints", "leases", DEAD_LETTERS):
            marker = unique("t")
            state[collection].insert_one({"_id": marker})
            state[collection].update_one({"_id": marker}, {"$set": {"probe": True}})
            state[collection].delete_one({"_id": marker})
        with pytest.raises(OperationFailure):
            tailer.drop_database("product_service")
    finally:
        tailer.close()


@pytest.fixture
def written_read_models(settings: Settings, postgres: Server, cassandra: Server, neo4j: Server) -> Iterator[str]:
    """A namespace whose read models the workers' users created and wrote (as `cdcflow worker` does)."""
    namespace = unique("sec")
    worker = settings.as_role("worker")
    noon = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=1)
    orders = order_lifecycle(TOPIC_ORDERS, "o-sec", "c-sec", ["pA", "pB"], ["paid"], start=noon)
    sinks = [build_sink(n, worker, namespace) for n in ("order_view", "purchase_graph", "clickstream")]
    try:
        for sink in sinks:
            sink.setup()
        sinks[0].write(orders)
        sinks[1].write(orders)
        sinks[2].write([page_view(TOPIC_CLICKSTREAM, "u-sec", "pA", noon)])
        yield namespace
    finally:
        for sink in sinks:
            sink.drop()
            sink.close()


def test_the_read_api_users_read_the_workers_models_and_nothing_more(
    settings: Settings, written_read_models: str
) -> None:
    namespace = written_read_models
    reader = settings.as_role("reader")
    with ReadModels(reader, namespace) as models:
        assert queries.order(models, "o-sec")["status"] == "paid"
        assert queries.recommendations(models, "c-sec")["purchased"] == ["pA", "pB"]
        day = (datetime.now(UTC) - timedelta(days=1)).date()
        assert len(queries.clicks(models, "u-sec", day=day)["views"]) == 1

    with postgres_connect(reader) as conn:
        for statement in (f"INSERT INTO {namespace}.order_view (order_id, status, version) VALUES ('x', 'x', 1)",
                          f"DROP TABLE {namespace}.order_view", f"CREATE TABLE {namespace}.t (a int)",
                          "CREATE SCHEMA sec_reader_ddl", "CREATE TEMP TABLE t (a int)"):
            conn.execute("SET default_transaction_read_only = off")  # the privileges hold without it, too
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)

    session = cassandra_session(reader)
    try:
        for statement in (f"INSERT INTO {namespace}.visitors (user_id) VALUES ('x')",
                          f"DROP TABLE {namespace}.visitors",
                          "CREATE KEYSPACE sec_reader_ddl WITH replication = "
                          "{'class': 'SimpleStrategy', 'replication_factor': 1}"):
            with pytest.raises(Unauthorized):
                session.execute(statement)
    finally:
        session.cluster.shutdown()

    # Neo4j Community has no read-only users: the read API's reads run in read transactions, which the server
    # itself keeps read-only.
    with (neo4j_driver(reader) as driver, driver.session(default_access_mode="READ") as neo,
          pytest.raises(ClientError, match=r"(?i)read")):
        neo.execute_read(lambda tx: tx.run("CREATE (:SecReaderWrite)").consume())  # type: ignore[no-untyped-call]


def test_read_paths_do_no_ddl(settings: Settings, postgres: Server, cassandra: Server, neo4j: Server) -> None:
    """A namespace no worker created yet: the read-only users read it as empty, so the read path creates
    nothing (it could not: they have no DDL rights), and nothing exists afterwards."""
    namespace = unique("secempty")
    with ReadModels(settings.as_role("reader"), namespace) as models:
        with pytest.raises(queries.NotFound):
            queries.order(models, "o1")
        with pytest.raises(queries.NotFound):
            queries.clicks(models, "u1")
        with pytest.raises(queries.NotFound):
            queries.recommendations(models, "c1")
        assert queries.top_products(models)["products"] == []
    with postgres_connect(settings) as conn:
        assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (namespace,)).fetchone() is None
    session = cassandra_session(settings)
    try:
        assert session.execute("SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s",
                               (namespace,)).one() is None
    finally:
        session.cluster.shutdown()


def test_a_tampered_cassandra_pointer_is_refused(settings: Settings, cassandra: Server) -> None:
    session = cassandra_session(settings)
    read_model, namespace = unique("rm"), unique("ns")
    try:
        set_cassandra_pointer(session, read_model, namespace, unique("ks"), replication=(
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"))
        session.execute(
            "UPDATE cdcflow_meta.active_namespace SET physical = %s WHERE read_model = %s AND namespace = %s",
            ("x; DROP KEYSPACE cdcflow_meta", read_model, namespace),
        )
        with pytest.raises(BadPointerError, match="not a valid keyspace name"):
            cassandra_pointer(session, read_model, namespace)
    finally:
        session.execute("DELETE FROM cdcflow_meta.active_namespace WHERE read_model = %s AND namespace = %s",
                        (read_model, namespace))
        session.cluster.shutdown()


# -- secrets out of sight, data private ---------------------------------------------------------------------


def test_no_password_in_any_servers_arguments_or_environment(settings: Settings, all_up: list[ServerStatus]) -> None:
    passwords = [p for server in ROLE_USERS for p in read_secrets(settings.data_dir, server).values()]
    assert len(passwords) >= 15
    for status in all_up:
        assert status.pid is not None and pid_alive(status.pid)
        cmdline = Path(f"/proc/{status.pid}/cmdline").read_bytes().decode(errors="replace")
        environ = Path(f"/proc/{status.pid}/environ").read_bytes().decode(errors="replace")
        for password in passwords:
            assert password not in cmdline, f"{status.name}: a password in its arguments"
            assert password not in environ, f"{status.name}: a password in its environment"


def test_no_password_in_any_server_log(settings: Settings, all_up: list[ServerStatus]) -> None:
    passwords = [p for server in ROLE_USERS for p in read_secrets(settings.data_dir, server).values()]
    logs = list(settings.runtime_dir.glob("*.log")) + list(settings.data_dir.glob("*/server.log"))
    logs += list(settings.data_dir.glob("*/logs/system.log"))
    assert logs
    for log in logs:
        text = log.read_text(errors="replace")
        assert not [p for p in passwords if p in text], f"a password in {log}"


def test_data_and_secrets_are_private(settings: Settings, all_up: list[ServerStatus]) -> None:
    for folder in (settings.data_dir, secrets_dir(settings.data_dir), settings.runtime_dir,
                   *(settings.data_dir / s.name for s in all_up)):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for secret in secrets_dir(settings.data_dir).glob("*.json"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    # What the servers and infra write: nothing others may read (the test's own private instances aside).
    world = [p for p in settings.data_dir.rglob("*")
             if not p.is_symlink() and p.exists() and p.stat().st_mode & 0o007]
    assert not world, f"world-accessible: {world[:5]}"


def test_postgres_cluster_and_socket_are_private(settings: Settings, postgres: Server) -> None:
    assert isinstance(postgres, PostgresServer)
    cluster = postgres.link.resolve()
    st = cluster.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == pwd.getpwnam("postgres").pw_uid
    if cluster.parent == Path("/tmp").resolve():
        # not the old predictable /tmp/cdcflow-pg-<sha1 of the data folder>
        assert cluster.name != f"cdcflow-pg-{hashlib.sha1(str(postgres.data_dir).encode()).hexdigest()[:10]}"
    sockets = list(cluster.glob(".s.PGSQL.*"))
    assert sockets and all(stat.S_IMODE(s.stat().st_mode) & 0o077 == 0 for s in sockets if s.is_socket())
    hba = (cluster / "pg_hba.conf").read_text()
    assert "trust" not in hba and "scram-sha-256" in hba
