"""The tailer on the shared servers: catch-up then stream, checkpoints, heartbeat, SIGTERM, dead letters."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymongo import MongoClient

from cdc.event import Event
from cdc.outbox import Document
from cdc.publisher import InFlight, Publisher, Sent
from cdc.settings import Settings
from cdc.tailer import Tailer
from tests.helpers import free_port, unique, wait_for
from tests.integration.test_tailer_support import (
    TopicReader,
    assert_per_aggregate_order,
    continue_events,
    header_map,
    insert_events,
    make_events,
    spawn_tailer,
    terminate,
)

# `client` (a MongoClient) comes from tests/conftest.py; the tailer also needs Kafka up.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("kafka")]


def _checkpoint(client: MongoClient[Document], settings: Settings, db: str) -> Document | None:
    return client[settings.tailer_state_database]["checkpoints"].find_one({"_id": f"{db}.outbox"})


def test_backlog_then_stream_then_resume(settings: Settings, client: MongoClient[Document]) -> None:
    db_a, db_b, topic = unique("tail_a"), unique("tail_b"), unique("tail_topic")
    before = make_events(topic, aggregates=20, per_aggregate=10)
    insert_events(client[db_a].outbox, before)
    reader = TopicReader(settings, topic)
    try:
        tailer = Tailer(settings, [db_a, db_b], client=client).start()
        during_a = make_events(topic, aggregates=10, per_aggregate=10)
        during_b = make_events(topic, aggregates=10, per_aggregate=10)
        insert_events(client[db_a].outbox, during_a, batch=7)
        insert_events(client[db_b].outbox, during_b, batch=13)
        reader.wait_for({d["_id"] for d in before + during_a + during_b}, timeout=60)
        # No checkpoint: each outbox starts with the catch-up scan (which ends once its events are marked); a
        # stop before it ends leaves no checkpoint, by design, so wait for both.
        wait_for(lambda: all(o.catchups == 1 for o in tailer.outboxes), 30, what="both catch-up scans to finish")
        assert tailer.stop(30), "tailer did not stop cleanly"

        # Everything acknowledged is marked published, and the checkpoint moved past it.
        for db in (db_a, db_b):
            assert client[db].outbox.count_documents({"published": False}) == 0
            assert client[db].outbox.count_documents({"published_at": None}) == 0
            assert (_checkpoint(client, settings, db) or {}).get("token")

        # Written while no tailer runs: the next one resumes from the checkpoint (no catch-up scan).
        after = make_events(topic, aggregates=5, per_aggregate=4)
        insert_events(client[db_a].outbox, after)
        tailer = Tailer(settings, [db_a, db_b], client=client).start()
        reader.wait_for({d["_id"] for d in after}, timeout=60)
        assert tailer.stop(30)
        assert tailer.outboxes[0].catchups == 0 and tailer.outboxes[0].forwarded == len(after)

        reader.poll(1.0)
        assert_per_aggregate_order(reader.records)
        # Key, headers and value as the design says.
        rec = next(r for r in reader.records if r.event_id == before[0]["_id"])
        assert rec.key == before[0]["aggregate_id"]
        assert rec.headers["event_id"] == before[0]["_id"].encode()
        assert rec.headers["type"] == b"OrderShipped" and rec.headers["version"] == b"1"
        assert rec.headers["trace_id"] == before[0]["headers"]["trace_id"].encode()
        # At-least-once (the catch-up overlap may duplicate), but a resumed run sends nothing twice.
        after_ids = {d["_id"] for d in after}
        assert sum(1 for r in reader.records if r.event_id in after_ids) == len(after)
    finally:
        reader.close()
        for db in (db_a, db_b):
            client.drop_database(db)


def test_backlog_then_fresh_events_keep_order_across_the_producer_switch(
    settings: Settings, client: MongoClient[Document]
) -> None:
    """A backlog drains through the long-linger producer, fresh events go through the short one; the switch
    waits for the other producer to drain, so no aggregate's events reach Kafka out of order."""
    db, topic = unique("tail_pace"), unique("tail_topic")
    reader = TopicReader(settings, topic)
    tailer = Tailer(settings, [db], client=client).start()
    try:
        wait_for(lambda: (_checkpoint(client, settings, db) or {}).get("token"), 30, what="first checkpoint")
        assert tailer.stop(30)
        # Written while no tailer runs: a backlog read from the stream, its changes over a second old.
        backlog = make_events(topic, aggregates=20, per_aggregate=100)
        insert_events(client[db].outbox, backlog, batch=500)
        time.sleep(1.0)
        tailer = Tailer(settings, [db], client=client).start()
        outbox = tailer.outboxes[0]
        wait_for(lambda: outbox.linger_switches >= 1, 30, what="the backlog going through the bulk producer")
        # The same aggregates go on while and after the backlog drains, a few events at a time.
        fresh = continue_events(backlog, per_aggregate=20)
        insert_events(client[db].outbox, fresh, batch=5, pause=0.02)
        reader.wait_for({d["_id"] for d in backlog + fresh}, timeout=120)
        wait_for(lambda: outbox.linger_switches >= 2, 30, what="fresh events back on the short-linger producer")
        reader.poll(1.0)
        assert_per_aggregate_order(reader.records)
    finally:
        assert tailer.stop(30)
        reader.close()
        client.drop_database(db)


def test_switching_producers_waits_for_the_one_in_use(settings: Settings) -> None:
    """Events sent through the long-linger producer are on Kafka before any sent after the switch back."""
    topic = unique("tail_topic")
    slow = settings.model_copy(update={"tailer_backlog_linger_ms": 1000})
    docs = make_events(topic, aggregates=1, per_aggregate=40)
    reader = TopicReader(settings, topic)
    publisher = Publisher(slow, source="test")
    inflight = InFlight()
    try:
        assert publisher.use_bulk(True) and publisher.bulk
        for doc in docs[:20]:
            event = Event.parse(doc)
            publisher.send(event, Sent(event.event_id, None, None), inflight)
        # The bulk producer still lingers on those 20: the switch flushes it first.
        assert publisher.use_bulk(False, wait=30) and not publisher.bulk
        for doc in docs[20:]:
            event = Event.parse(doc)
            publisher.send(event, Sent(event.event_id, None, None), inflight)
        assert publisher.flush(30) == 0
        reader.wait_for({d["_id"] for d in docs}, timeout=60)
        assert [r.version for r in sorted(reader.records, key=lambda r: r.offset)] == list(range(1, 41))
    finally:
        publisher.close()
        reader.close()


def test_idle_outbox_checkpoints_on_heartbeat(settings: Settings, client: MongoClient[Document]) -> None:
    db, other = unique("tail_idle"), unique("tail_busy")
    fast = settings.model_copy(update={"tailer_heartbeat_seconds": 0.5})
    client[db].outbox.insert_one({"_id": "not-an-event-but-creates-the-collection", "published": True})
    tailer = Tailer(fast, [db], client=client).start()
    try:
        first = wait_for(lambda: (_checkpoint(client, settings, db) or {}).get("token"), 30, what="first checkpoint")
        # Other databases write (and the server's no-op heartbeat ticks): the idle outbox's token must move on.
        for i in range(5):
            client[other].coll.insert_one({"i": i})
        wait_for(lambda: (_checkpoint(client, settings, db) or {}).get("token") != first, 30,
                 what="post-batch resume token checkpointed on the heartbeat")
    finally:
        assert tailer.stop(30)
        client.drop_database(db)
        client.drop_database(other)


def test_invalid_document_goes_to_dead_letter_topic(settings: Settings, client: MongoClient[Document]) -> None:
    db, topic = unique("tail_dlq"), unique("tail_topic")
    good = make_events(topic, aggregates=1, per_aggregate=3)
    bad = {**good[1], "_id": "not-a-uuid", "published": False}
    reader, dlq = TopicReader(settings, topic), TopicReader(settings, f"{topic}.dlq")
    tailer = Tailer(settings, [db], client=client).start()
    try:
        insert_events(client[db].outbox, [good[0], bad, good[1], good[2]], batch=1)
        reader.wait_for({d["_id"] for d in good}, timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msgs = dlq.consumer.consume(10, timeout=0.5)
            if msgs and not msgs[0].error():
                headers = header_map(msgs[0])
                assert headers["event_id"] == b"not-a-uuid" and b"event_id" in headers["error"]
                break
        else:
            pytest.fail("dead letter not on the .dlq topic")
    finally:
        assert tailer.stop(30)
        reader.close()
        dlq.close()
        client.drop_database(db)


def test_sigterm_flushes_checkpoints_and_exits_zero(
    settings: Settings, client: MongoClient[Document], tmp_path: Path
) -> None:
    db, topic = unique("tail_term"), unique("tail_topic")
    docs = make_events(topic, aggregates=10, per_aggregate=50)
    reader = TopicReader(settings, topic)
    proc = spawn_tailer(settings, [db], tmp_path / "tail.log")
    try:
        # Past its start-up catch-up scan (a checkpoint exists), the tailer streams; SIGTERM it mid-stream.
        wait_for(lambda: (_checkpoint(client, settings, db) or {}).get("token"), 60, what="first checkpoint")
        insert_events(client[db].outbox, docs[:250], batch=10)
        wait_for(lambda: client[db].outbox.count_documents({"published": True}) > 0, 60, what="first events")
        assert terminate(proc) == 0, (tmp_path / "tail.log").read_text()[-2000:]
        # Flushed and checkpointed: what it sent is marked published, and a restart sends none of it again.
        sent = {d["_id"] for d in client[db].outbox.find({"published": True}, {"_id": 1})}
        insert_events(client[db].outbox, docs[250:], batch=50)
        proc = spawn_tailer(settings, [db], tmp_path / "tail.log")
        reader.wait_for({d["_id"] for d in docs}, timeout=60)
        assert terminate(proc) == 0
        reader.poll(1.0)
        log = (tmp_path / "tail.log").read_text()
        assert log.count("catch-up scan done") == 1, log[-3000:]
        assert len(reader.records) == len(reader.ids) == len(docs), "events sent twice after a clean stop"
        assert sent
        assert_per_aggregate_order(reader.records)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.close()
        client.drop_database(db)



def _scrape(port: int, source: str) -> dict[str, float]:
    """The exporter's samples of one outbox, as {name or name:label_value: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("source") != source:
                continue
            extra = [v for k, v in sorted(sample.labels.items()) if k not in ("source", "le")]
            le = sample.labels.get("le")
            name = ":".join([sample.name, *extra] + ([f"le={le}"] if le else []))
            samples[name] = sample.value
    return samples


def test_prometheus_metrics_of_a_running_tailer(
    settings: Settings, client: MongoClient[Document], tmp_path: Path
) -> None:
    db, topic = unique("tail_metrics"), unique("tail_topic")
    docs = make_events(topic, aggregates=5, per_aggregate=20)
    key, port = f"{db}.outbox", free_port()
    reader = TopicReader(settings, topic)
    proc = spawn_tailer(settings, [db], tmp_path / "tail.log", CDCFLOW_TAILER_METRICS_PORT=str(port),
                        CDCFLOW_TAILER_BACKLOG_INTERVAL_SECONDS="0.5")
    try:
        wait_for(lambda: (_checkpoint(client, settings, db) or {}).get("token"), 60, what="first checkpoint")
        insert_events(client[db].outbox, docs, batch=10)
        reader.wait_for({d["_id"] for d in docs}, timeout=60)

        def settled() -> dict[str, float] | None:
            m = _scrape(port, key)
            done = m.get("cdcflow_events_total:forwarded") == len(docs) and m.get("cdcflow_outbox_unpublished") == 0
            return m if done else None

        m = wait_for(settled, 60, interval=0.5, what="forwarded count and an empty backlog in the metrics")
        assert m["cdcflow_events_total:read"] == len(docs)
        # Every event's outbox -> Kafka latency is in the histogram, with plausible values.
        assert m["cdcflow_outbox_to_kafka_latency_seconds_count"] == len(docs)
        assert 0 < m["cdcflow_outbox_to_kafka_latency_seconds_sum"] < 60 * len(docs)
        assert m["cdcflow_outbox_to_kafka_latency_seconds_bucket:le=+Inf"] == len(docs)
        assert m["cdcflow_tailer_batch_size_sum"] == len(docs) and m["cdcflow_tailer_batch_size_count"] >= 1
        assert m["cdcflow_tailer_leader"] == 1 and m["cdcflow_tailer_in_flight"] == 0
        assert 0 <= m["cdcflow_tailer_checkpoint_age_seconds"] < 60
        assert m["cdcflow_tailer_stream_restarts_total:catchup"] == 1  # the first start had no checkpoint
    finally:
        terminate(proc)
        reader.close()
        client.drop_database(db)
