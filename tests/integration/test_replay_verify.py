"""`replay --rebuild --verify` and `replay --until` on the real servers.

Verify: a faithful rebuild passes; a live model changed behind the pipeline's back is refused and left as it was;
records that arrive while the models are compared explain what the live model has more; once the live group is
past the shadow's end, a row it lacks is not explained. Until: only the records published at or before the time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from cdc.connect import cassandra_session, neo4j_driver, postgres_connect
from cdc.kafka import ensure_topics, kafka_config
from cdc.settings import Settings
from sinks.order_view import fold_orders
from sinks.registry import build_sink
from streams.replay import VerifyError, replay
from streams.verify import LIVE_AHEAD, MISSING_IN_LIVE, MISSING_IN_SHADOW, VALUE
from tests.helpers import unique, wait_for
from tests.integration.test_replay import (
    PARTITIONS,
    REBUILDS,
    cli,
    order_rows,
    orders,
)
from tests.streams_support import (
    WorkerProcess,
    caught_up,
    end_offsets,
    page_view,
    produce,
)

pytestmark = pytest.mark.integration

ADMIN = {"CDCFLOW_ROLE": "admin"}  # a namespace of the test's own, which the workers' generated user does not own


def _events(model: str, topic: str) -> list[Any]:
    if REBUILDS[model][0] == "orders":
        return orders(topic, "o", 25)
    now = datetime.now(UTC).replace(microsecond=0)
    return [page_view(topic, f"u{i % 6}", f"p{i % 5}" if i % 3 else None, now - timedelta(minutes=7 * i))
            for i in range(120)]


def _fresh_snapshot(model: str, settings: Settings, ns: str) -> Any:
    """The model as a new reader sees it (no cached keyspace pointer)."""
    with build_sink(model, settings, ns) as sink:
        return sink.snapshot()


def _shadows_left(settings: Settings, model: str, ns: str) -> int:
    """Namespaces (or nodes) of rebuild shadows of `ns` still there."""
    if model == "order_view":
        with postgres_connect(settings) as conn:
            row = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE %s", (f"{ns}\\_r%",)).fetchone()
        return int(row[0]) if row else 0
    if model == "purchase_graph":
        driver = neo4j_driver(settings)
        try:
            with driver.session() as s:
                found = s.run("MATCH (n) WHERE any(l IN labels(n) WHERE l STARTS WITH $p) RETURN count(n) AS n",
                              p=f"{ns}_r").single()
        finally:
            driver.close()
        return int(found["n"]) if found else 0
    session = cassandra_session(settings)
    try:
        names = [r.keyspace_name for r in session.execute("SELECT keyspace_name FROM system_schema.keyspaces")]
    finally:
        session.cluster.shutdown()
    return len([n for n in names if n.startswith(f"{ns}_r")])


def _commit(settings: Settings, group: str, offsets: dict[int, int], topic: str) -> None:
    """Commit `offsets` for `group`, as a live worker that applied everything before them would have."""
    consumer = Consumer(kafka_config(settings, **{"group.id": group, "enable.auto.commit": False}))
    try:
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    finally:
        consumer.close()


# -- --verify -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", sorted(REBUILDS))
def test_verify_passes_a_faithful_rebuild_and_swaps(
    settings: Settings, kafka: object, postgres: object, neo4j: object, cassandra: object, model: str
) -> None:
    ns = unique("vf")
    topic = f"{ns}_{REBUILDS[model][0]}"
    ensure_topics(settings, [topic], partitions=PARTITIONS)
    events = _events(model, topic)
    produce(settings, topic, events)
    small = settings.model_copy(update={"stream_batch_size": 20, "replay_swap_grace_seconds": 1.0})
    sink = build_sink(model, small, ns)
    try:
        replay(small, model, None, topic=topic, namespace=ns)
        live = sink.snapshot()
        entries = list(sink.entries())
        assert entries and list(sink.entries(chunk=7)) == entries  # pages of 7 give the same walk
        assert [e.key for e in entries] == sorted(e.key for e in entries)

        report = replay(small, model, None, rebuild=True, verify=True, topic=topic, namespace=ns)
        assert report.verification is not None and report.verification.ok, report.verification
        assert report.verification.equal == len(entries) and report.verification.unexplained == 0
        assert report.to_json()["verification"]["ok"] is True
        assert _fresh_snapshot(model, small, ns) == live
        assert report.physical is not None
    finally:
        sink.drop()
        sink.close()


def _same_version_tamper(settings: Settings, ns: str) -> None:
    with postgres_connect(settings) as conn:
        conn.execute(f'UPDATE "{ns}".order_view SET status = %s '  # type: ignore[arg-type]
                     f'WHERE order_id = (SELECT min(order_id) FROM "{ns}".order_view)', ("bogus",))


TAMPERS: dict[str, tuple[str, Callable[[Settings, str], None], str]] = {
    "order_view-same-version": ("order_view", _same_version_tamper, VALUE),
    "order_view-higher-version": ("order_view", REBUILDS["order_view"][1], LIVE_AHEAD),
    "purchase_graph-higher-version": ("purchase_graph", REBUILDS["purchase_graph"][1], LIVE_AHEAD),
    "clickstream-extra-row": ("clickstream", REBUILDS["clickstream"][1], MISSING_IN_SHADOW),
}


@pytest.mark.parametrize("case", sorted(TAMPERS))
def test_verify_refuses_a_tampered_live_model_and_leaves_it_untouched(
    settings: Settings, kafka: object, postgres: object, neo4j: object, cassandra: object, case: str
) -> None:
    model, tamper, kind = TAMPERS[case]
    ns = unique("vt")
    topic = f"{ns}_{REBUILDS[model][0]}"
    ensure_topics(settings, [topic], partitions=PARTITIONS)
    produce(settings, topic, _events(model, topic))
    small = settings.model_copy(update={"stream_batch_size": 20})
    sink = build_sink(model, small, ns)
    try:
        replay(small, model, None, topic=topic, namespace=ns)
        tamper(small, ns)
        tampered = sink.snapshot()

        with pytest.raises(VerifyError) as refused:
            replay(small, model, None, rebuild=True, verify=True, topic=topic, namespace=ns)
        verdict = refused.value.verification
        assert verdict.unexplained == 1 and [d.kind for d in verdict.examples] == [kind]
        assert "1 unexplained difference(s)" in str(refused.value)
        assert _fresh_snapshot(model, small, ns) == tampered  # nothing swapped
        assert _shadows_left(small, model, ns) == 0  # the shadow was dropped

        if model == "order_view":  # the command line: exit 1, the difference named, no traceback
            base = ["replay", "--read-model", model, "--from", "earliest", "--topic", topic, "--namespace", ns,
                    "--rebuild", "--verify", "--yes"]
            done = cli(*base, env=ADMIN)
            assert done.returncode == 1, (done.stdout, done.stderr)
            assert "refused: 1 unexplained difference(s)" in done.stderr and "Traceback" not in done.stderr
            assert "status live='bogus'" in done.stderr or "live at version 999" in done.stderr
            assert "the live model is as it was" in done.stderr
            as_json = json.loads(cli(*base, "--json", env=ADMIN).stdout)
            assert as_json["refused"] is True and as_json["verification"]["unexplained"] == 1
            assert sink.snapshot() == tampered
            assert _shadows_left(small, model, ns) == 0
    finally:
        sink.drop()
        sink.close()


def test_verify_holds_the_live_model_to_what_its_group_has_committed(
    settings: Settings, kafka: object, postgres: object
) -> None:
    ns = unique("vg")
    topic = f"{ns}_orders"
    group = f"{ns}.order_view"
    ensure_topics(settings, [topic], partitions=PARTITIONS)
    events = orders(topic, "g", 12)
    produce(settings, topic, events)
    sink = build_sink("order_view", settings, ns)
    try:
        replay(settings, "order_view", None, topic=topic, namespace=ns)
        with postgres_connect(settings) as conn:  # a row the live model lost
            conn.execute(f'DELETE FROM "{ns}".order_view WHERE order_id = %s', ("g3",))  # type: ignore[arg-type]
        damaged = order_rows(sink)

        # no live worker has committed anything: the live model may simply not be there yet
        lagging = replay(settings, "order_view", None, rebuild=True, verify=True, topic=topic, namespace=ns,
                         group=group)
        assert lagging.verification is not None and lagging.verification.explained["live_behind"] == 1
        assert not lagging.verification.live_caught_up
        assert order_rows(sink) == [r for _, r in sorted(fold_orders(events).items())]  # swapped: g3 is back

        with postgres_connect(settings) as conn:
            conn.execute(f'DELETE FROM "{ns}".order_view WHERE order_id = %s', ("g3",))  # type: ignore[arg-type]
        # the group committed past every record: the live model should have g3 and does not
        _commit(settings, group, end_offsets(settings, topic, PARTITIONS), topic)
        with pytest.raises(VerifyError) as refused:
            replay(settings, "order_view", None, rebuild=True, verify=True, topic=topic, namespace=ns, group=group)
        verdict = refused.value.verification
        assert verdict.live_caught_up and [(d.kind, d.aggregate) for d in verdict.examples] == [(MISSING_IN_LIVE, "g3")]
        assert order_rows(sink) == damaged
    finally:
        sink.drop()
        sink.close()


def test_verify_explains_what_a_live_worker_applies_while_the_models_are_compared(
    settings: Settings, kafka: object, postgres: object, tmp_path: Path
) -> None:
    ns = unique("vl")
    topic = f"{ns}_orders"
    group = f"{ns}.order_view"
    ensure_topics(settings, [topic], partitions=PARTITIONS)
    first = orders(topic, "a", 15)
    produce(settings, topic, first)
    worker = WorkerProcess("order_view", topic, group, ns, tmp_path)
    sink = build_sink("order_view", settings, ns)
    later = orders(topic, "late", 4)
    try:
        wait_for(lambda: caught_up(settings, group, topic, PARTITIONS), timeout=120, what="live worker caught up")

        class DuringVerify:
            """New orders the live worker applies after the shadow's end, before the live model is read."""

            def phase(self, name: str, total: int) -> None:
                if name == "verify":
                    produce(settings, topic, later)
                    wait_for(lambda: caught_up(settings, group, topic, PARTITIONS), timeout=120,
                             what="live worker applied the new orders")

            def advance(self, events: int) -> None: ...

        report = replay(settings, "order_view", None, rebuild=True, verify=True, topic=topic, namespace=ns,
                        group=group, progress=DuringVerify())
        verdict = report.verification
        assert verdict is not None and verdict.ok, verdict
        assert verdict.live_caught_up
        assert verdict.explained["later_events"] == len(fold_orders(later))  # live has them, the shadow not yet
        assert verdict.equal == len(fold_orders(first))
        # the final catch-up brought them into the swapped-in model
        assert order_rows(sink) == [r for _, r in sorted(fold_orders(first + later).items())]
        assert worker.alive(), worker.log_text()[-2000:]
    finally:
        worker.stop()
        sink.drop()
        sink.close()


# -- --until ------------------------------------------------------------------------------------------------


def _cut() -> datetime:
    """A time between what was produced before and what is produced after (Kafka times are milliseconds)."""
    import time

    time.sleep(1.0)
    cut = datetime.now(UTC)
    time.sleep(1.0)
    return cut


def _z(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def test_until_builds_the_model_as_of_a_past_time(settings: Settings, kafka: object, postgres: object) -> None:
    ns = unique("vu")
    topic = f"{ns}_orders"
    ensure_topics(settings, [topic], partitions=PARTITIONS)
    early = orders(topic, "early", 6)
    produce(settings, topic, early)
    first_cut = _cut()
    middle = orders(topic, "mid", 5)
    produce(settings, topic, middle)
    second_cut = _cut()
    produce(settings, topic, orders(topic, "late", 4))
    as_of = f"{ns}_asof"
    between = f"{ns}_between"
    sinks = [build_sink("order_view", settings, n) for n in (as_of, between)]
    try:
        base = ["replay", "--read-model", "order_view", "--topic", topic, "--json"]
        planned = json.loads(cli(*base, "--from", "earliest", "--until", _z(first_cut), "--namespace", as_of,
                                 "--dry-run", env=ADMIN).stdout)
        assert planned["events"] == len(early) and planned["until"] == first_cut.isoformat()

        done = cli(*base, "--from", "earliest", "--until", _z(first_cut), "--namespace", as_of, env=ADMIN)
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout)
        assert report["events"] == len(early) and report["until"] == first_cut.isoformat()
        assert order_rows(sinks[0]) == [r for _, r in sorted(fold_orders(early).items())]

        # with --from: the records published between the two times only
        done = cli(*base, "--from", _z(first_cut), "--until", _z(second_cut), "--namespace", between, env=ADMIN)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout)["events"] == len(middle)
        assert order_rows(sinks[1]) == [r for _, r in sorted(fold_orders(middle).items())]

        # the as-of model is a namespace like any other: the queries read it
        first_id = sorted(fold_orders(early))[0]
        shown = cli("query", "order", first_id, "--namespace", as_of, "--json", env=ADMIN)
        assert shown.returncode == 0 and json.loads(shown.stdout)["order_id"] == first_id, shown.stderr[-2000:]

        # a time before the first record: nothing
        assert replay(settings, "order_view", None, topic=topic, namespace=as_of,
                      until=first_cut - timedelta(hours=1)).events == 0
    finally:
        for sink in sinks:
            sink.drop()
            sink.close()


def test_until_and_verify_refuse_what_does_not_go_together(settings: Settings) -> None:
    now = datetime.now(UTC)
    base = ["replay", "--read-model", "order_view", "--from", "earliest"]
    for args, message in [
        (["--until", _z(now - timedelta(minutes=1)), "--rebuild", "--yes"], "--until cannot be used with --rebuild"),
        (["--verify"], "--verify compares a rebuilt shadow with the live model"),
        (["--until", "yesterday noon"], "--until must be an ISO-8601 time"),
        (["--until", _z(now + timedelta(days=1))], "is in the future"),
    ]:
        done = cli(*base, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
    done = cli("replay", "--read-model", "order_view", "--from", _z(now - timedelta(minutes=1)),
               "--until", _z(now - timedelta(hours=1)))
    assert done.returncode == 2 and "is before --from" in done.stderr
    with pytest.raises(ValueError, match="--until cannot be used with --rebuild"):
        replay(settings, "order_view", None, rebuild=True, until=now)
