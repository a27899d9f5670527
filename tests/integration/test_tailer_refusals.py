"""No outbox document stops the stream: what Kafka refuses and what is not an event become the tailer's own dead
letters (counted by `status` and the metrics), the events after them go on, and a re-drive after a fix delivers
them."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta

import pytest
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic  # type: ignore[attr-defined]
from prometheus_client import REGISTRY
from pymongo import MongoClient

from cdc.checkpoint import CheckpointStore
from cdc.dead_letters import DeadLetterStore, redrive
from cdc.event import Event, utcnow
from cdc.kafka import admin_client, ensure_topics
from cdc.outbox import Document, outbox_document
from cdc.settings import Settings
from cdc.tailer import Tailer
from cli.status import Thresholds, outbox_status, verdict
from tests.helpers import unique, wait_for
from tests.integration.test_tailer_support import TopicReader, assert_per_aggregate_order, insert_events, make_events

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("kafka")]

SMALL = 50_000  # max.message.bytes of the test's topic


def _state(client: MongoClient[Document], settings: Settings) -> tuple[CheckpointStore, DeadLetterStore]:
    state = client[settings.tailer_state_database]
    return CheckpointStore(state["checkpoints"]), DeadLetterStore(state["dead_letters"])


def _topic_limit(settings: Settings, topic: str, limit: int) -> None:
    """Set `topic`'s max.message.bytes (creating the topic with it if it does not exist)."""
    admin = admin_client(settings)
    if topic not in admin.list_topics(timeout=10).topics:
        for future in admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1,
                                                    config={"max.message.bytes": str(limit)})]).values():
            future.result(30)
        ensure_topics(settings, [topic])  # waits for the partitions' leaders
        return
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("max.message.bytes", str(limit), incremental_operation=AlterConfigOpType.SET)])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)


def _big(topic: str, like: Document, size: int) -> Document:
    """A valid event of about `size` bytes of payload (random: lz4 cannot shrink it below the topic's limit), of
    the same aggregate as `like`, one version after it."""
    blob = base64.b64encode(os.urandom(size * 3 // 4)).decode()
    event = Event.create(topic=topic, aggregate_type="Order", aggregate_id=like["aggregate_id"], type="OrderShipped",
                         version=like["version"] + 1, payload={"blob": blob}, source_service="test",
                         occurred_at=like["occurred_at"] + timedelta(microseconds=500))
    return outbox_document(event)


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # CDCFLOW_ROLE=admin: the re-drive reads this test's own outbox database, which the tailer's user cannot.
    done = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CDCFLOW_ROLE": "admin"})
    assert not check or done.returncode == 0, done.stdout + done.stderr
    return done


def _dead_lettered_count(key: str) -> float:
    return REGISTRY.get_sample_value("cdcflow_events_total", {"stage": "dead_lettered", "source": key}) or 0.0


@pytest.fixture
def outbox_db(client: MongoClient[Document], settings: Settings) -> Iterator[str]:
    db = unique("tail_refuse")
    yield db
    client.drop_database(db)
    state = client[settings.tailer_state_database]
    for name in ("checkpoints", "leases"):
        state[name].delete_one({"_id": f"{db}.outbox"})
    state["dead_letters"].delete_many({"outbox": f"{db}.outbox"})


def test_a_record_larger_than_its_topic_takes_is_dead_lettered_and_redriven_after_the_fix(
    settings: Settings, client: MongoClient[Document], outbox_db: str
) -> None:
    db, topic = outbox_db, unique("tail_topic")
    key = f"{db}.outbox"
    _topic_limit(settings, topic, SMALL)  # a topic made by someone else, with a smaller limit than ours
    before = make_events(topic, aggregates=1, per_aggregate=3)
    big = _big(topic, before[-1], 200_000)  # legal for MongoDB and under max_event_bytes, not for this topic
    after = make_events(topic, aggregates=20, per_aggregate=10)
    reader = TopicReader(settings, topic)
    checkpoints, letters = _state(client, settings)
    dead_before = _dead_lettered_count(key)
    tailer = Tailer(settings, [db], client=client).start()
    try:
        insert_events(client[db].outbox, [*before, big], batch=1)
        insert_events(client[db].outbox, after, batch=20)
        # Every event after the refused one arrives, in order; the refused one does not.
        reader.wait_for({d["_id"] for d in before + after}, timeout=60)
        assert big["_id"] not in reader.ids
        assert_per_aggregate_order(reader.records)
        # It is a dead letter with its reason, counted by the metric and by `cdcflow status`.
        [letter] = letters.list(key)
        assert letter.event_id == big["_id"] and letter.kind == "refused" and letter.topic == topic
        assert "max.message.bytes" in letter.reason and str(SMALL) in letter.reason
        assert letter.document is not None and letter.document["payload"]["blob"] == big["payload"]["blob"]
        assert _dead_lettered_count(key) == dead_before + 1
        wait_for(lambda: checkpoints.load(key).watermark == max(d["occurred_at"] for d in after), 30,
                 what="the checkpoint moving past the dead letter")
        assert tailer.stop(30)
        status = outbox_status(client, settings, "test", db, utcnow())
        assert status.dead_letters == 1 and status.backlog == 0
        _, warnings, _ = verdict([status], [], [], Thresholds.from_settings(settings))
        assert any("1 outbox documents dead-lettered by the tailer" in w for w in warnings), warnings

        # `cdcflow dlq list` shows it; before the fix a re-drive fails again, with its reason, and exits 1.
        listed = [json.loads(line) for line in _cli("dlq", "list", "--topic", topic, "--json").stdout.splitlines()]
        assert [(x["source"], x["event_id"], x["kind"]) for x in listed] == [("tailer", big["_id"], "refused")]
        failing = _cli("dlq", "replay", "--topic", topic, "--json", check=False)
        assert failing.returncode == 1 and big["_id"] in json.loads(failing.stdout)["tailer"]["still_failing"]
        assert letters.pending(key) == 1

        # The fix: the topic takes larger records. A re-drive delivers it, once.
        _topic_limit(settings, topic, 1_000_000)
        report = json.loads(_cli("dlq", "replay", "--topic", topic, "--json").stdout)
        assert report["tailer"] == {"replayed": 1, "still_failing": {}}
        reader.wait_for({big["_id"]}, timeout=30)
        assert letters.pending(key) == 0 and letters.list(key)[0].replayed_at is not None
        assert redrive(settings, client, outbox=key).replayed == 0  # nothing left to re-drive
    finally:
        tailer.stop(30)
        reader.close()


def test_a_record_the_broker_refuses_after_sending_is_dead_lettered(
    settings: Settings, client: MongoClient[Document], outbox_db: str
) -> None:
    """The topic's limit shrinks while the tailer runs (it checked the old one): the broker refuses the record
    (MSG_SIZE_TOO_LARGE in the delivery report), and that too is a dead letter, not a stuck stream."""
    db, topic = outbox_db, unique("tail_topic")
    key = f"{db}.outbox"
    _topic_limit(settings, topic, 1_000_000)
    first = make_events(topic, aggregates=5, per_aggregate=2)
    reader = TopicReader(settings, topic)
    _, letters = _state(client, settings)
    tailer = Tailer(settings, [db], client=client).start()
    try:
        insert_events(client[db].outbox, first)
        reader.wait_for({d["_id"] for d in first}, timeout=60)
        _topic_limit(settings, topic, SMALL)
        big = _big(topic, first[-1], 200_000)
        later = make_events(topic, aggregates=5, per_aggregate=4)
        insert_events(client[db].outbox, [big], batch=1)
        insert_events(client[db].outbox, later, batch=5)
        reader.wait_for({d["_id"] for d in later}, timeout=60)
        letter = wait_for(lambda: next(iter(letters.list(key)), None), 30, what="the dead letter")
        assert letter.event_id == big["_id"] and letter.kind == "refused"
        # refused by the broker, or (after the session restarted for the good records of its batch) before
        # sending, against the limit read afresh
        assert ("Kafka refused it" in letter.reason and "too large" in letter.reason.lower()) or (
            "larger than topic" in letter.reason and str(SMALL) in letter.reason), letter.reason
        assert big["_id"] not in reader.ids
        # the good records the broker refused with it (one batch) were re-sent, not dead-lettered
        assert [x.event_id for x in letters.list(key)] == [big["_id"]]
    finally:
        tailer.stop(30)
        reader.close()


def test_a_forbidden_topic_is_dead_lettered(settings: Settings, client: MongoClient[Document], outbox_db: str) -> None:
    db, topic = outbox_db, unique("tail_topic")
    key = f"{db}.outbox"
    good = make_events(topic, aggregates=3, per_aggregate=4)
    # A valid event for a topic clients may not write (Kafka's own): refused with "Invalid topic".
    internal = outbox_document(Event.create(topic="__consumer_offsets", aggregate_type="Order", aggregate_id="x",
                                            type="OrderShipped", version=1, payload={}, source_service="test"))
    reader = TopicReader(settings, topic)
    _, letters = _state(client, settings)
    tailer = Tailer(settings, [db], client=client).start()
    try:
        insert_events(client[db].outbox, [good[0], internal, *good[1:]], batch=1)
        reader.wait_for({d["_id"] for d in good}, timeout=60)
        letter = wait_for(lambda: next(iter(letters.list(key)), None), 30, what="the dead letter")
        assert letter.event_id == internal["_id"] and letter.topic == "__consumer_offsets"
        assert letter.kind == "refused" and "topic" in letter.reason.lower(), letter.reason
    finally:
        tailer.stop(30)
        reader.close()


def test_documents_that_are_not_events_are_dead_lettered_by_class(
    settings: Settings, client: MongoClient[Document], outbox_db: str
) -> None:
    db, topic = outbox_db, unique("tail_topic")
    key = f"{db}.outbox"
    good = make_events(topic, aggregates=2, per_aggregate=5)
    template = good[0]
    now = utcnow()
    bad: dict[str, Document] = {
        "no event fields": {"_id": "plain-document", "hello": "world"},
        "bad event id": {**template, "_id": "not-a-uuid"},
        "id too long": {**template, "_id": unique("u"), "aggregate_id": "a" * 10_000},
        "out of range": {**template, "_id": unique("v"), "version": -3},
        "wrong type": {**template, "_id": unique("w"), "occurred_at": "yesterday"},
        "not JSON": {**template, "_id": unique("j"), "payload": {"when": now}},
        "bad topic": {**template, "_id": unique("t"), "topic": "no spaces allowed"},
    }
    docs = [good[0], *bad.values(), *good[1:]]
    reader = TopicReader(settings, topic)
    checkpoints, letters = _state(client, settings)
    tailer = Tailer(settings, [db], client=client).start()
    try:
        insert_events(client[db].outbox, docs, batch=1)
        reader.wait_for({d["_id"] for d in good}, timeout=60)
        wait_for(lambda: len(letters.list(key)) == len(bad), 30, what="a dead letter per bad document")
        found = {str(x.document_id): x for x in letters.list(key)}
        for what, doc in bad.items():
            letter = found[str(doc["_id"])]
            assert letter.kind == "invalid" and letter.reason, what
        assert "event_id" in found["not-a-uuid"].reason
        assert all(t.is_alive() for t in tailer._threads), "a thread died on a bad document"
        wait_for(lambda: checkpoints.load(key).watermark == max(d["occurred_at"] for d in good), 30,
                 what="the checkpoint moving past them")
    finally:
        tailer.stop(30)
        reader.close()
