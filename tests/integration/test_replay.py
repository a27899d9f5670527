"""`cdcflow replay` on the real servers: idempotent, live group untouched, --from a time, --rebuild swaps atomically."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cassandra.cluster import Session

from cdc.connect import cassandra_session, neo4j_driver, postgres_connect
from cdc.event import Event
from cdc.kafka import ensure_topics
from cdc.schemas import dlq_topic
from cdc.settings import Settings
from sinks.base import Sink
from sinks.order_view import OrderViewSink, fold_orders
from sinks.pointers import cassandra_pointer
from sinks.registry import build_sink
from streams.replay import parse_start, replay
from tests.helpers import unique, wait_for
from tests.streams_support import (
    REPO,
    WorkerProcess,
    caught_up,
    committed_offsets,
    end_offsets,
    order_lifecycle,
    page_view,
    produce,
    produce_raw,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4
KINDS = [["paid", "shipped", "delivered"], ["cancelled"], ["paid", "refunded"], [], ["paid", "shipped"]]


def orders(topic: str, prefix: str, count: int) -> list[Event]:
    out: list[Event] = []
    for i in range(count):
        out += order_lifecycle(topic, f"{prefix}{i}", f"c{i % 5}", [f"p{i % 4}", f"p{(i * 3 + 1) % 4}"],
                               KINDS[i % len(KINDS)], refund="2.00")
    return out


def order_rows(sink: Sink) -> list[Any]:
    assert isinstance(sink, OrderViewSink)
    return sink.rows()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
    )


# -- idempotence, dead letters, the live group ---------------------------------------------------------------


def test_replay_twice_changes_nothing_and_leaves_the_live_group_alone(
    settings: Settings, kafka: object, postgres: object, tmp_path: Path
) -> None:
    ns = unique("rpl")
    topic = f"{ns}_orders"
    group = f"{ns}.order_view"
    ensure_topics(settings, [topic, dlq_topic(topic)], partitions=PARTITIONS)
    sink = build_sink("order_view", settings, ns)
    first = orders(topic, "a", 20)
    produce(settings, topic, first)
    worker = WorkerProcess("order_view", topic, group, ns, tmp_path)
    try:
        wait_for(lambda: caught_up(settings, group, topic, PARTITIONS), timeout=120, what="live worker caught up")
    finally:
        worker.stop()
    assert order_rows(sink) == [r for _, r in sorted(fold_orders(first).items())]
    live_offsets = committed_offsets(settings, group, topic, PARTITIONS)

    # more events while the live worker is stopped: its group stays behind them
    second = orders(topic, "b", 10)
    produce(settings, topic, second)
    produce_raw(settings, topic, [(b"poison", b"not json", [])])
    total = len(first) + len(second) + 1
    try:
        once = replay(settings, "order_view", None, topic=topic, namespace=ns)
        assert once.events == total
        assert once.dead == 1  # like the live worker: the poison record is dead-lettered, not dropped
        expected = [r for _, r in sorted(fold_orders(first + second).items())]
        after_once = order_rows(sink)
        assert after_once == expected

        twice = replay(settings, "order_view", parse_start("earliest"), topic=topic, namespace=ns)
        assert twice.events == total
        assert order_rows(sink) == after_once
        assert once.group_id != twice.group_id and not once.group_id.startswith(group)

        # the live group's offsets did not move (and are still behind the end); the replay committed nothing
        assert committed_offsets(settings, group, topic, PARTITIONS) == live_offsets
        assert sum(live_offsets.values()) < sum(end_offsets(settings, topic, PARTITIONS).values())
        for g in (once.group_id, twice.group_id):
            assert all(o < 0 for o in committed_offsets(settings, g, topic, PARTITIONS).values())
        assert sum(end_offsets(settings, dlq_topic(topic), PARTITIONS).values()) >= 2
    finally:
        sink.drop()
        sink.close()


# -- --from ISO-TIME -------------------------------------------------------------------------------------------


def test_replay_from_a_time_applies_only_the_events_published_after_it(
    settings: Settings, kafka: object, postgres: object
) -> None:
    ns = unique("rpt")
    topic = f"{ns}_orders"
    ensure_topics(settings, [topic], partitions=PARTITIONS)
    before = orders(topic, "early", 6)
    produce(settings, topic, before)
    time.sleep(1.0)
    cut = datetime.now(UTC)
    time.sleep(1.0)
    after = orders(topic, "late", 5)
    produce(settings, topic, after)
    sink = build_sink("order_view", settings, ns)
    try:
        done = cli("replay", "--read-model", "order_view", "--from", cut.isoformat().replace("+00:00", "Z"),
                   "--topic", topic, "--namespace", ns, "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout)
        assert report["events"] == len(after)
        rows = order_rows(sink)
        assert rows == [r for _, r in sorted(fold_orders(after).items())]
        assert all(r.order_id.startswith("late") for r in rows)

        # a time after the last record: nothing to do
        done = cli("replay", "--read-model", "order_view", "--from", datetime.now(UTC).isoformat(),
                   "--topic", topic, "--namespace", ns, "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout)["events"] == 0
    finally:
        sink.drop()
        sink.close()


def test_replay_refuses_bad_input_with_exit_code_2_and_no_traceback(settings: Settings) -> None:
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    for args, message in [
        (["--read-model", "nope", "--from", "earliest"], "unknown read model 'nope'"),
        (["--read-model", "order_view", "--from", "last tuesday"], "--from must be 'earliest' or an ISO-8601"),
        (["--read-model", "order_view", "--from", future], "is in the future"),
        (["--read-model", "order_view", "--from", "earliest", "--namespace", "Bad-Name"], "bad sink namespace"),
    ]:
        done = cli("replay", *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr
        assert "Traceback" not in done.stderr
    done = cli("resnapshot", "--service", "billing")
    assert done.returncode == 2 and "unknown service 'billing'" in done.stderr and "Traceback" not in done.stderr


# -- --rebuild ----------------------------------------------------------------------------------------------


def test_rebuild_shows_its_plan_asks_first_and_dry_run_writes_nothing(
    settings: Settings, kafka: object, postgres: object
) -> None:
    ns = unique("rbc")
    topic = f"{ns}_orders"
    ensure_topics(settings, [topic], partitions=PARTITIONS)
    events = orders(topic, "c", 6)
    produce(settings, topic, events)
    sink = build_sink("order_view", settings, ns)
    try:
        replay(settings, "order_view", None, topic=topic, namespace=ns)
        before = order_rows(sink)
        target = ["--topic", topic, "--namespace", ns]
        _tamper_postgres(settings, ns)
        tampered = order_rows(sink)
        assert tampered != before

        base = ["replay", "--read-model", "order_view", "--from", "earliest", *target]
        # a namespace of the test's own, which the workers' generated user (replay's role) does not own
        admin = {"CDCFLOW_ROLE": "admin"}
        dry = cli(*base, "--rebuild", "--dry-run", env=admin)
        assert dry.returncode == 0, dry.stderr
        assert f"{len(events)} record(s) of {topic}" in dry.stdout and f"live model {ns}" in dry.stdout
        assert "swap it in" in dry.stdout
        planned = json.loads(cli(*base, "--rebuild", "--dry-run", "--json", env=admin).stdout)
        assert planned == {"dry_run": True, "read_model": "order_view", "topic": topic, "namespace": ns,
                           "physical": ns, "rebuild": True, "start": None, "until": None, "verify": False,
                           "partitions": PARTITIONS,
                           "events": len(events)}
        # no terminal to ask on, no --yes: refused, nothing done
        asked = cli(*base, "--rebuild", env=admin)
        assert asked.returncode == 2 and "confirm with --yes" in asked.stderr, asked.stderr
        assert "swap it in" in asked.stderr and "Traceback" not in asked.stderr
        assert order_rows(sink) == tampered
        with postgres_connect(settings) as conn:
            shadows = conn.execute("SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE %s",
                                   (f"{ns}_r%",)).fetchone()
        assert shadows == (0,)  # the dry run and the refusal built no shadow

        done = cli(*base, "--rebuild", "--yes", "--json", env=admin)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["rebuild"] is True
        assert order_rows(sink) == before  # rebuilt from the topic: the tampered row is gone
    finally:
        sink.drop()
        sink.close()




def _tamper_postgres(settings: Settings, ns: str) -> None:
    with postgres_connect(settings) as conn:
        conn.execute(f'UPDATE "{ns}".order_view SET status = %s, version = 999 '  # type: ignore[arg-type]
                     f'WHERE order_id = (SELECT min(order_id) FROM "{ns}".order_view)', ("bogus",))


def _tamper_neo4j(settings: Settings, ns: str) -> None:
    driver = neo4j_driver(settings)
    try:
        with driver.session() as s:
            s.run(f"MATCH ()-[r:`{ns}__PURCHASED`]->() WITH r ORDER BY r.order_id LIMIT 1 "  # type: ignore[arg-type]
                  "SET r.status = 'bogus', r.version = 999").consume()
    finally:
        driver.close()


def _tamper_cassandra(settings: Settings, ns: str) -> None:
    session: Session = cassandra_session(settings)
    try:
        session.execute(
            f"INSERT INTO {ns}.page_views_by_user_day (user_id, day, ts, event_id, url) "
            "VALUES ('ghost', '2026-01-01', '2026-01-01 00:00:00+0000', uuid(), '/ghost') USING TTL 3600"
        )
    finally:
        session.cluster.shutdown()


REBUILDS: dict[str, tuple[str, Callable[[Settings, str], None]]] = {
    "order_view": ("orders", _tamper_postgres),
    "purchase_graph": ("orders", _tamper_neo4j),
    "clickstream": ("clickstream", _tamper_cassandra),
}


class WatchLive:
    """A progress listener that reads the live model while the shadow is being built."""

    def __init__(self, read: Callable[[], Any]) -> None:
        self.read = read
        self.current = ""
        self.seen: list[Any] = []

    def phase(self, name: str, total: int) -> None:
        self.current = name

    def advance(self, events: int) -> None:
        if self.current == "rebuild":
            self.seen.append(self.read())


@pytest.mark.parametrize("model", sorted(REBUILDS))
def test_rebuild_yields_the_live_model_and_readers_never_see_it_half_built(
    settings: Settings, kafka: object, postgres: object, neo4j: object, cassandra: object, model: str
) -> None:
    source, tamper = REBUILDS[model]
    ns = unique("rb")
    topic = f"{ns}_{source}"
    ensure_topics(settings, [topic], partitions=PARTITIONS)
    if source == "orders":
        events = orders(topic, "o", 25)
    else:
        now = datetime.now(UTC).replace(microsecond=0)
        events = [page_view(topic, f"u{i % 6}", f"p{i % 5}" if i % 3 else None, now - timedelta(minutes=7 * i))
                  for i in range(120)]
    produce(settings, topic, events)
    small = settings.model_copy(update={"stream_batch_size": 20, "replay_swap_grace_seconds": 1.0})
    sink = build_sink(model, small, ns)
    try:
        replay(small, model, None, topic=topic, namespace=ns)  # the live model
        live = sink.snapshot()
        assert live
        if model == "order_view":
            assert live == [r.to_json() for _, r in sorted(fold_orders(events).items())]

        # damage the live model in a way no plain replay can repair (a higher version, an extra row)
        tamper(small, ns)
        damaged = sink.snapshot()
        assert damaged != live
        plain = replay(small, model, None, topic=topic, namespace=ns)
        assert plain.events == len(events)
        assert sink.snapshot() == damaged

        watch = WatchLive(lambda: build_sink(model, small, ns).snapshot())
        report = replay(small, model, None, rebuild=True, topic=topic, namespace=ns, progress=watch)
        assert report.shadow and report.shadow != ns
        assert [p.name for p in report.phases] == ["rebuild", "catch-up (shadow)", "catch-up (live)"]
        assert report.phases[0].events == len(events)
        # while the shadow was built, readers of the live namespace saw the old model, whole
        assert len(watch.seen) >= 3
        assert all(seen == damaged for seen in watch.seen)

        rebuilt = build_sink(model, small, ns)
        assert rebuilt.snapshot() == live
        rebuilt.close()
        # idempotent afterwards too
        replay(small, model, None, topic=topic, namespace=ns)
        assert build_sink(model, small, ns).snapshot() == live
        _assert_no_leftovers(small, model, ns, report.shadow, report.retired)
    finally:
        sink.drop()
        sink.close()


def _assert_no_leftovers(settings: Settings, model: str, ns: str, shadow: str, retired: str | None) -> None:
    if model == "order_view":
        with postgres_connect(settings) as conn:
            schemas = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                                                  (f"{ns}%",)).fetchall()}
        assert schemas == {ns}
    elif model == "purchase_graph":
        driver = neo4j_driver(settings)
        try:
            with driver.session() as s:
                left = s.run(f"MATCH (n:`{shadow}__Customer`) RETURN count(n) AS n").single()  # type: ignore[arg-type]
                constraints = [r["name"] for r in s.run("SHOW CONSTRAINTS YIELD name")]
        finally:
            driver.close()
        assert left is not None and left["n"] == 0
        assert not [c for c in constraints if c.startswith(shadow)]
    else:
        session = cassandra_session(settings)
        try:
            assert cassandra_pointer(session, "clickstream", ns) == shadow
            keyspaces = {r.keyspace_name for r in session.execute("SELECT keyspace_name FROM system_schema.keyspaces")}
        finally:
            session.cluster.shutdown()
        assert shadow in keyspaces
        assert retired == ns and ns not in keyspaces  # the replaced keyspace was dropped after the grace period


def test_rebuild_while_a_live_worker_writes_loses_nothing_and_the_worker_follows_the_swap(
    settings: Settings, kafka: object, cassandra: object, tmp_path: Path
) -> None:
    ns = unique("rbl")
    topic = f"{ns}_clickstream"
    group = f"{ns}.clickstream"
    ensure_topics(settings, [topic], partitions=PARTITIONS)
    now = datetime.now(UTC).replace(microsecond=0)

    def views(start: int, count: int) -> list[Event]:
        return [page_view(topic, f"u{i % 5}", f"p{i % 7}", now - timedelta(seconds=i))
                for i in range(start, start + count)]

    produce(settings, topic, views(0, 200))
    # grace above the sink's pointer cache (5 s): the worker must have moved to the new keyspace before the drop
    s = settings.model_copy(update={"stream_batch_size": 50, "replay_swap_grace_seconds": 7.0})
    worker = WorkerProcess("clickstream", topic, group, ns, tmp_path)
    sink = build_sink("clickstream", s, ns)
    try:
        wait_for(lambda: caught_up(settings, group, topic, PARTITIONS), timeout=120, what="live worker caught up")

        class ProduceMeanwhile(WatchLive):
            def advance(self, events: int) -> None:  # live traffic while the shadow is built
                if self.current == "rebuild":
                    self.seen.append(produce(settings, topic, views(1000 + 10 * len(self.seen), 10)))

        meanwhile = ProduceMeanwhile(lambda: None)
        report = replay(s, "clickstream", None, rebuild=True, topic=topic, namespace=ns, progress=meanwhile)
        produced_during = sum(meanwhile.seen)
        assert report.phases[0].events == 200 and produced_during >= 30
        assert report.phases[1].events == produced_during  # caught up in the shadow before the swap
        produce(settings, topic, views(5000, 20))  # after the swap: the live worker writes into the new keyspace
        total = 200 + produced_during + 20
        wait_for(lambda: caught_up(settings, group, topic, PARTITIONS), timeout=120, what="live worker caught up")
        fresh = build_sink("clickstream", s, ns)
        wait_for(lambda: len(fresh.snapshot()["views"]) == total, timeout=30, what="every view in the rebuilt model")
        assert len({v["event_id"] for v in fresh.snapshot()["views"]}) == total
        fresh.close()
        assert worker.alive(), worker.log_text()[-2000:]
        assert "dead_letter" not in worker.log_text()
    finally:
        worker.stop()
        sink.drop()
        sink.close()
