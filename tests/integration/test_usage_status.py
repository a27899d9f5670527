"""`cdcflow status` on the real servers: outbox backlog and its age, tailer lease and checkpoint, consumer lag
of a consumer group that stops and then catches up, dead-letter counts, and the exit code for scripts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from confluent_kafka import Consumer
from pymongo import MongoClient
from typer.testing import CliRunner

from cdc.event import Event, utcnow
from cdc.kafka import ensure_topics, kafka_config
from cdc.mongo import mongo_client
from cdc.outbox import outbox_document
from cdc.settings import Settings
from cli.main import app
from cli.status import LagStatus, LagTarget, gather_status, lag_status
from tests.helpers import free_port, unique, wait_for
from tests.streams_support import produce_raw

pytestmark = pytest.mark.integration

Document = dict[str, object]


@pytest.fixture
def mongo_db(settings: Settings, mongo: object) -> Iterator[tuple[MongoClient[Document], str, str]]:
    """(client, service db prefix, tailer state db), dropped afterwards."""
    client = mongo_client(settings)
    prefix, state = unique("st") + "_", unique("st")
    yield client, prefix, state
    for name in (f"{prefix}order_service", state):
        client.drop_database(name)
    client.close()


def _events(n: int, age: timedelta) -> list[Event]:
    at = utcnow() - age
    return [
        Event.create(topic="orders", aggregate_type="Order", aggregate_id=f"o{i}", type="OrderDelivered",
                     payload={"order_id": f"o{i}"}, version=1, occurred_at=at + timedelta(seconds=i))
        for i in range(n)
    ]


def test_outbox_backlog_lease_and_checkpoint(settings: Settings, mongo_db: tuple[MongoClient[Document], str, str]
                                             ) -> None:
    client, prefix, state = mongo_db
    s = settings.model_copy(update={"service_db_prefix": prefix, "tailer_state_database": state,
                                    "status_max_backlog": 2, "status_max_backlog_age_seconds": 3600.0})
    outbox = client[f"{prefix}order_service"]["outbox"]
    events = _events(3, age=timedelta(minutes=5))
    outbox.insert_many([outbox_document(e) for e in events])
    key = f"{prefix}order_service.outbox"
    now = utcnow()
    client[state]["leases"].insert_one({"_id": key, "owner": "host-a:42", "expires_at": now + timedelta(seconds=30),
                                        "fence": 3})
    client[state]["checkpoints"].insert_one({"_id": key, "token": {"_data": "x"}, "fence": 3,
                                             "updated_at": now - timedelta(minutes=10)})
    client[state]["dead_letters"].insert_one({"_id": f"{key}/x", "outbox": key, "document_id": "x", "kind": "invalid",
                                              "reason": "not an event", "at": now, "replayed_at": None})

    status = gather_status(s, lag_targets=[], dlq_topics=[], client=client)
    by = {o.service: o for o in status.outboxes}
    assert set(by) == {"product", "order", "clickstream"}
    order = by["order"]
    assert order.database == f"{prefix}order_service"
    assert order.backlog == 3
    assert order.oldest_age_seconds is not None and 295 <= order.oldest_age_seconds <= 400
    assert order.leader == "host-a:42" and order.lease_live
    assert order.checkpoint_age_seconds is not None and 595 <= order.checkpoint_age_seconds <= 700
    assert by["product"].backlog == 0 and by["product"].leader is None
    assert not status.ok
    assert any("3 events not yet on Kafka (max 2)" in p for p in status.problems), status.problems
    assert any("checkpoint is 10m" in w for w in status.warnings), status.warnings
    assert order.dead_letters == 1 and any("1 outbox documents dead-lettered" in w for w in status.warnings)

    # On Kafka: the tailer's checkpoint watermark reached the newest event; the backlog is gone, the verdict OK.
    client[state]["checkpoints"].update_one({"_id": key}, {"$set": {"watermark": max(e.occurred_at for e in events)}})
    status = gather_status(s, lag_targets=[], dlq_topics=[], client=client)
    assert {o.service: o.backlog for o in status.outboxes}["order"] == 0
    assert status.ok, status.problems


def test_backlog_age_alone_fails_the_verdict(settings: Settings, mongo_db: tuple[MongoClient[Document], str, str]
                                             ) -> None:
    client, prefix, state = mongo_db
    s = settings.model_copy(update={"service_db_prefix": prefix, "tailer_state_database": state,
                                    "status_max_backlog": 100, "status_max_backlog_age_seconds": 60.0})
    client[f"{prefix}order_service"]["outbox"].insert_one(outbox_document(_events(1, timedelta(minutes=2))[0]))
    status = gather_status(s, lag_targets=[], dlq_topics=[], client=client)
    assert not status.ok
    assert any("oldest event not yet on Kafka is 2m" in p for p in status.problems), status.problems


def _consume_and_commit(settings: Settings, group: str, topic: str, expected: int) -> None:
    """A consumer group member that reads `expected` records, commits, and leaves (the 'worker')."""
    consumer = Consumer(kafka_config(settings, **{"group.id": group, "enable.auto.commit": False,
                                                  "auto.offset.reset": "earliest"}))
    consumer.subscribe([topic])
    seen = 0
    try:
        def step() -> bool:
            nonlocal seen
            for msg in consumer.consume(100, timeout=0.5):
                if msg.error() is None:
                    seen += 1
            return seen >= expected

        wait_for(step, timeout=60, interval=0, what=f"{expected} records on {topic}")
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()


def test_consumer_lag_appears_when_the_group_stops_and_clears_when_it_catches_up(
    settings: Settings, kafka: object
) -> None:
    topic, group = unique("st_topic"), unique("st_group")
    ensure_topics(settings, [topic], partitions=3)
    target = LagTarget("test_model", group, topic)
    s = settings.model_copy(update={"status_max_lag": 5})

    def produce(n: int) -> None:
        produce_raw(settings, topic, [(f"k{i}".encode(), b"{}", []) for i in range(n)])

    produce(4)
    first = lag_status(s, target, timeout=10)
    assert first == LagStatus("test_model", group, topic, lag=4, partitions=first.partitions, committed=False)
    assert sum(first.partitions.values()) == 4 and set(first.partitions) == {0, 1, 2}

    _consume_and_commit(settings, group, topic, 4)
    caught_up = gather_status(s, databases={}, lag_targets=[target], dlq_topics=[])
    assert caught_up.read_models[0].lag == 0 and caught_up.read_models[0].committed
    assert caught_up.ok

    # The group has stopped consuming: new records are lag, over the threshold the verdict fails.
    produce(9)
    stopped = gather_status(s, databases={}, lag_targets=[target], dlq_topics=[])
    assert stopped.read_models[0].lag == 9
    assert not stopped.ok and "read model test_model: lag 9" in stopped.problems[0]

    _consume_and_commit(settings, group, topic, 9)
    again = gather_status(s, databases={}, lag_targets=[target], dlq_topics=[])
    assert again.read_models[0].lag == 0 and again.ok


def test_dead_letter_counts(settings: Settings, kafka: object) -> None:
    topic = unique("st") + ".dlq"
    ensure_topics(settings, [topic], partitions=2)
    produce_raw(settings, topic, [(b"k1", b"bad", []), (b"k2", b"worse", [])])
    status = gather_status(settings, databases={}, lag_targets=[], dlq_topics=[topic])
    letters = status.dead_letters[0]
    assert (letters.topic, letters.total, letters.unreplayed, letters.error) == (topic, 2, 2, None)
    assert any(f"{topic}: 2 dead letters not replayed" in w for w in status.warnings)
    assert status.ok  # dead letters are reported, they do not fail the probe


def test_cli_exit_codes_as_probes_expect_and_json(settings: Settings, mongo_db: tuple[MongoClient[Document], str, str],
                                                  kafka: object) -> None:
    """0 ok, 1 warning, 2 critical, 3 unknown; a topic prefix of its own keeps other tests' dead letters and
    consumer groups out of this deployment's status."""
    client, prefix, state = mongo_db
    client[f"{prefix}order_service"]["outbox"].insert_many(
        [outbox_document(e) for e in _events(2, timedelta(seconds=1))]
    )
    now = utcnow()
    for service in ("product", "order", "clickstream"):  # a live tailer on every outbox, checkpoints fresh
        key = f"{prefix}{service}_service.outbox"
        client[state]["leases"].insert_one({"_id": key, "owner": "h:1", "expires_at": now + timedelta(hours=1),
                                            "fence": 1})
        client[state]["checkpoints"].insert_one({"_id": key, "token": {"_data": "x"}, "fence": 1,
                                                 "updated_at": now + timedelta(hours=1)})
    kafka_prefix = unique("stp") + "."
    # Databases of its own, which the tailer's user (the role of `status`) may not read: run as admin.
    env = {"CDCFLOW_ROLE": "admin", "CDCFLOW_SERVICE_DB_PREFIX": prefix, "CDCFLOW_TAILER_STATE_DATABASE": state,
           "CDCFLOW_KAFKA_TOPIC_PREFIX": kafka_prefix, "CDCFLOW_STATUS_MAX_LAG": str(10**12),
           "CDCFLOW_STATUS_MAX_BACKLOG_AGE_SECONDS": "3600", "CDCFLOW_STATUS_MAX_BACKLOG": "10"}
    runner = CliRunner()
    ok = runner.invoke(app, ["status"], env=env)
    assert ok.exit_code == 0, ok.output
    assert "outboxes and tailer" in ok.stdout and "status: OK (exit code 0)" in ok.stdout

    critical = runner.invoke(app, ["status", "--json"], env={**env, "CDCFLOW_STATUS_MAX_BACKLOG": "1"})
    assert critical.exit_code == 2, critical.output
    report = json.loads(critical.stdout)
    assert not report["ok"] and report["level"] == "critical" and report["exit_code"] == 2
    assert {o["service"]: o["backlog"] for o in report["outboxes"]}["order"] == 2
    assert {rm["read_model"] for rm in report["read_models"]} >= {"order_view", "purchase_graph", "clickstream"}
    assert {rm["group"] for rm in report["read_models"]} >= {f"{kafka_prefix}cdcflow.order_view"}
    assert {d["topic"] for d in report["dead_letters"]} == {f"{kafka_prefix}{t}.dlq"
                                                           for t in ("inventory", "orders", "clickstream")}

    client[state]["leases"].delete_one({"_id": f"{prefix}product_service.outbox"})
    warning = runner.invoke(app, ["status"], env=env)
    assert warning.exit_code == 1, warning.output
    assert "no live tailer lease" in warning.stdout and "status: WARNING (exit code 1)" in warning.stdout

    # MongoDB cannot be reached: nothing known is critical, so the probe says "unknown".
    dead = f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"
    unknown = runner.invoke(app, ["status", "--json"], env={**env, "MONGO_URI": dead,
                                                            "CDCFLOW_STATUS_TIMEOUT_SECONDS": "1"})
    assert unknown.exit_code == 3, unknown.output
    data = json.loads(unknown.stdout)
    assert data["level"] == "unknown" and any("cannot read it" in u for u in data["unknown"]), data
