"""A sink that refuses us (no privilege, a read-only transaction, a wrong password; Neo4j's read-only access
mode) is "the sink is down": the worker waits and retries, visibly (a log line each attempt, Prometheus
metrics), commits nothing past the refused events and dead-letters none of them; once the refusal is lifted it
catches up. Every local store checks passwords (issue 15): a wrong one is a refusal too. Cassandra's
classification is unit-tested (tests/unit/test_sinks_errors.py); that it refuses a wrong password is tested in
tests/integration/test_security.py."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from neo4j import Session
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import SecretStr

from cdc.connect import postgres_connect
from cdc.kafka import ensure_topics
from cdc.retry import Backoff
from cdc.schemas import dlq_topic
from cdc.settings import Settings
from sinks.order_view import OrderViewSink, fold_orders
from sinks.purchase_graph import PurchaseGraphSink
from streams.dlq import list_dead_letters
from streams.processor import BatchProcessor, DeadLetter, RawRecord
from tests.helpers import free_port, unique, wait_for
from tests.streams_support import (
    WorkerProcess,
    caught_up,
    committed_offsets,
    expected_graph,
    order_lifecycle,
    produce,
)

pytestmark = pytest.mark.integration

PARTITIONS = 2


def metrics(port: int) -> dict[tuple[str, str], float]:
    """The worker's cdcflow_sink_* samples by (name, cause)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, s.labels.get("cause", "")): s.value
        for family in text_string_to_metric_families(text) if family.name.startswith("cdcflow_sink")
        for s in family.samples
    }


def count(text: str, words: str) -> int:
    return sum(1 for line in text.splitlines() if words in line)


@contextmanager
def worker_role(settings: Settings, ns: str, sink: OrderViewSink) -> Iterator[tuple[str, str]]:
    """A login role that owns the read model's schema and tables (so its worker's setup runs), and its DSN."""
    role, password = f"{ns}_w", f"pw-{ns}"
    sink.setup()
    with postgres_connect(settings) as conn:
        dbname = conn.info.dbname
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
        conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(dbname), sql.Identifier(role)))
        conn.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(sql.Identifier(ns), sql.Identifier(role)))
        for table in sink.tables:
            conn.execute(sql.SQL("ALTER TABLE {}.{} OWNER TO {}").format(
                sql.Identifier(ns), sql.Identifier(table), sql.Identifier(role)))
    params = {**conninfo_to_dict(settings.postgres_dsn), "user": role, "password": password}
    try:
        yield role, make_conninfo("", **params)
    finally:
        with postgres_connect(settings) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(ns)))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def admin(settings: Settings, statement: sql.Composed) -> None:
    with postgres_connect(settings) as conn:
        conn.execute(statement)


def test_postgres_privileges_and_read_only_are_waited_on_never_dead_lettered(
    settings: Settings, kafka: object, postgres: object, tmp_path: Path
) -> None:
    ns = unique("rf")
    topic, group = f"{ns}_orders", f"{ns}.g"
    ensure_topics(settings, [topic, dlq_topic(topic)], partitions=PARTITIONS)
    a = [e for i in range(6) for e in order_lifecycle(topic, f"a{i}", "c1", ["p"], ["paid"])]
    b = [e for i in range(6) for e in order_lifecycle(topic, f"b{i}", "c2", ["p"], ["shipped"])]
    sink = OrderViewSink(settings, ns)
    port = free_port()
    with worker_role(settings, ns, sink) as (role, dsn):
        table = sql.SQL("{}.{}").format(sql.Identifier(ns), sql.Identifier(sink.table))
        admin(settings, sql.SQL("REVOKE INSERT, UPDATE ON {} FROM {}").format(table, sql.Identifier(role)))
        worker = WorkerProcess("order_view", topic, group, ns, tmp_path,
                               env={"POSTGRES_DSN": dsn, "CDCFLOW_WORKER_METRICS_PORT": str(port)})
        try:
            # 1. no privilege on the table
            produce(settings, topic, a)
            wait_for(lambda: count(worker.log_text(), '"sink_refused"') >= 3, timeout=90,
                     what="three refused attempts logged")
            text = worker.log_text()
            assert "InsufficientPrivilege" in text and "42501" in text
            seen = metrics(port)
            assert seen[("cdcflow_sink_waiting", "refused")] == 1
            assert seen[("cdcflow_sink_retries_total", "refused")] >= 3
            assert all(o < 0 for o in committed_offsets(settings, group, topic, PARTITIONS).values())
            assert worker.alive() and not list_dead_letters(settings, [topic])

            admin(settings, sql.SQL("GRANT INSERT, UPDATE ON {} TO {}").format(table, sql.Identifier(role)))
            wait_for(lambda: caught_up(settings, group, topic, PARTITIONS), timeout=90, what="caught up (grant)")
            folded = fold_orders(a)
            assert sink.rows() == [folded[k] for k in sorted(folded)]
            assert metrics(port)[("cdcflow_sink_waiting", "refused")] == 0
            assert '"sink_recovered"' in worker.log_text()

            # 2. a read-only role: its next session cannot write (its current one is ended to pick it up)
            admin(settings, sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(
                sql.Identifier(role)))
            admin(settings, sql.SQL("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {}")
                  .format(sql.Literal(role)))
            before = count(worker.log_text(), "ReadOnlySqlTransaction")
            committed = committed_offsets(settings, group, topic, PARTITIONS)
            produce(settings, topic, b)
            wait_for(lambda: count(worker.log_text(), "ReadOnlySqlTransaction") >= before + 3, timeout=90,
                     what="three read-only refusals logged")
            assert metrics(port)[("cdcflow_sink_waiting", "refused")] == 1
            assert committed_offsets(settings, group, topic, PARTITIONS) == committed
            assert worker.alive() and not list_dead_letters(settings, [topic])

            admin(settings, sql.SQL("ALTER ROLE {} RESET default_transaction_read_only").format(
                sql.Identifier(role)))
            wait_for(lambda: caught_up(settings, group, topic, PARTITIONS), timeout=90, what="caught up (rw)")
            folded = fold_orders(a + b)
            assert sink.rows() == [folded[k] for k in sorted(folded)]
            assert not list_dead_letters(settings, [topic])
        finally:
            worker.stop()
            sink.close()


def test_postgres_wrong_password_is_waited_on(
    settings: Settings, kafka: object, postgres: object, tmp_path: Path
) -> None:
    ns = unique("rp")
    topic, group = f"{ns}_orders", f"{ns}.g"
    sink = OrderViewSink(settings, ns)
    with worker_role(settings, ns, sink) as (role, dsn):
        wrong = make_conninfo(dsn, password="not-the-password")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(wrong, connect_timeout=5).close()  # the local Postgres checks passwords (scram)
        ensure_topics(settings, [topic, dlq_topic(topic)], partitions=PARTITIONS)
        events = order_lifecycle(topic, "o1", "c1", ["p"], ["paid"])
        worker = WorkerProcess("order_view", topic, group, ns, tmp_path, env={"POSTGRES_DSN": wrong})
        try:
            produce(settings, topic, events)
            wait_for(lambda: count(worker.log_text(), '"sink_refused"') >= 2, timeout=90, what="refusals logged")
            assert "password authentication failed" in worker.log_text()
            assert "not-the-password" not in worker.log_text()
            admin(settings, sql.SQL("ALTER ROLE {} PASSWORD 'not-the-password'").format(sql.Identifier(role)))
            wait_for(lambda: caught_up(settings, group, topic, PARTITIONS), timeout=90, what="caught up")
            assert sink.rows() == [fold_orders(events)["o1"]] and not list_dead_letters(settings, [topic])
        finally:
            worker.stop()
            sink.close()


class ReadOnlyGraph(PurchaseGraphSink):
    """The real sink and server, its writes sent in read access mode while `read_only` (the server refuses
    them with Neo.ClientError.Statement.AccessMode, as a read-only replica or database would)."""

    read_only = True

    def _session(self) -> Session:
        session = super()._session()
        if self.read_only:
            session.execute_write = session.execute_read  # type: ignore[method-assign]
        return session


class Letters:
    def __init__(self) -> None:
        self.published: list[DeadLetter] = []

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        self.published.extend(letters)


def test_neo4j_read_access_mode_is_waited_on_never_dead_lettered(settings: Settings, neo4j: object) -> None:
    ns = unique("rn")
    events = order_lifecycle("orders", "o1", "c1", ["a", "b"], ["paid", "shipped"])
    records = [RawRecord("orders", 0, i, e.kafka_key(), e.to_json(), tuple(e.kafka_headers()))
               for i, e in enumerate(events)]
    sink = ReadOnlyGraph(settings, ns)
    letters = Letters()
    processor = BatchProcessor(sink, letters, Backoff(0.05, 0.2))

    async def scenario() -> Any:
        task = asyncio.ensure_future(processor.process(records))
        deadline = asyncio.get_running_loop().time() + 60
        while processor.status.attempts < 3:
            assert not task.done() and asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        assert processor.status.waiting and processor.status.cause == "refused"
        assert "AccessMode" in (processor.status.last_error or "")
        sink.read_only = False
        return await asyncio.wait_for(task, 60)

    try:
        result = asyncio.run(scenario())
        assert result.written == 3 and not result.dead and not letters.published
        assert not processor.status.waiting
        assert sink.snapshot() == expected_graph(fold_orders(events))
    finally:
        sink.read_only = False
        sink.drop()
        processor.close()


def test_neo4j_wrong_password_is_waited_on(settings: Settings, neo4j: object) -> None:
    auth = settings.neo4j_auth
    assert auth is not None, "the local Neo4j runs with authentication"
    ns = unique("rw")
    events = order_lifecycle("orders", "o1", "c1", ["a"], ["paid"])
    records = [RawRecord("orders", 0, i, e.kafka_key(), e.to_json(), tuple(e.kafka_headers()))
               for i, e in enumerate(events)]
    wrong = settings.model_copy(update={"neo4j_user": auth[0], "neo4j_password": SecretStr("not-the-password")})
    sink = PurchaseGraphSink(wrong, ns)
    processor = BatchProcessor(sink, Letters(), Backoff(0.2, 1.0))

    async def scenario() -> Any:
        task = asyncio.ensure_future(processor.process(records))
        while processor.status.attempts < 2:
            assert not task.done()
            await asyncio.sleep(0.05)
        assert processor.status.cause == "refused"
        sink.settings = settings  # the password is fixed; the sink reconnects after a refusal
        return await asyncio.wait_for(task, 60)

    try:
        result = asyncio.run(scenario())
        assert result.written == 2 and not result.dead
    finally:
        sink.drop()
        processor.close()
