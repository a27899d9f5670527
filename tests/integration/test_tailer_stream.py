"""The tailer on the shared servers: catch-up then stream, checkpoints, heartbeat, SIGTERM, metrics."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from pymongo import MongoClient

from cdc.checkpoint import CheckpointStore
from cdc.outbox import Document, backlog
from cdc.settings import Settings
from cdc.tailer import Tailer
from tests.helpers import free_port, unique, wait_for
from tests.integration.test_tailer_support import (
    TopicReader,
    assert_per_aggregate_order,
    insert_events,
    make_events,
    scrape,
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
        # No checkpoint: each outbox starts with the catch-up scan (which ends once Kafka acknowledged it); a
        # stop before it ends leaves no checkpoint, by design, so wait for both.
        wait_for(lambda: all(o.catchups == 1 for o in tailer.outboxes), 30, what="both catch-up scans to finish")
        assert tailer.stop(30), "tailer did not stop cleanly"

        # The checkpoint moved past everything, and its watermark is the newest event: no backlog is left.
        for db, docs in ((db_a, before + during_a), (db_b, during_b)):
            checkpoint = CheckpointStore(client[settings.tailer_state_database]["checkpoints"]).load(f"{db}.outbox")
            assert checkpoint.token is not None
            assert checkpoint.watermark == max(d["occurred_at"] for d in docs)
            assert backlog(client[db].outbox, checkpoint.watermark) == (0, None)
            assert checkpoint.scan_from == checkpoint.watermark - timedelta(seconds=settings.tailer_scan_margin_seconds)
            # The tailer never writes to the source's outbox.
            assert client[db].outbox.count_documents({}) == len(docs)
            assert client[db].outbox.count_documents({"published": {"$exists": True}}) == 0

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
        wait_for(lambda: reader.seen(0.2), 60, what="first events")
        assert terminate(proc) == 0, (tmp_path / "tail.log").read_text()[-2000:]
        # Flushed and checkpointed: a restart sends none of what was sent again.
        sent = set(reader.ids)
        insert_events(client[db].outbox, docs[250:], batch=50)
        proc = spawn_tailer(settings, [db], tmp_path / "tail.log")
        reader.wait_for({d["_id"] for d in docs}, timeout=60)
        assert terminate(proc) == 0
        reader.poll(1.0)
        log = (tmp_path / "tail.log").read_text()
        assert log.count("catch_up_scan_done") == 1, log[-3000:]
        assert len(reader.records) == len(reader.ids) == len(docs), "events sent twice after a clean stop"
        assert sent
        assert_per_aggregate_order(reader.records)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.close()
        client.drop_database(db)


def test_prometheus_metrics_of_a_running_tailer(
    settings: Settings, client: MongoClient[Document], tmp_path: Path
) -> None:
    db, topic = unique("tail_metrics"), unique("tail_topic")
    docs = make_events(topic, aggregates=5, per_aggregate=20)
    key, port = f"{db}.outbox", free_port()
    reader = TopicReader(settings, topic)
    proc = spawn_tailer(settings, [db], tmp_path / "tail.log", CDCFLOW_TAILER_METRICS_PORT=str(port))
    try:
        wait_for(lambda: (_checkpoint(client, settings, db) or {}).get("token"), 60, what="first checkpoint")
        insert_events(client[db].outbox, docs, batch=10)
        reader.wait_for({d["_id"] for d in docs}, timeout=60)

        def settled() -> dict[str, float] | None:
            m = scrape(port, key)
            done = m.get("cdcflow_events_total:forwarded") == len(docs) and m.get("cdcflow_tailer_in_flight") == 0
            return m if done else None

        m = wait_for(settled, 60, interval=0.5, what="forwarded count and nothing in flight in the metrics")
        assert m["cdcflow_events_total:read"] == len(docs)
        # Every event's outbox -> Kafka latency is in the histogram, with plausible values.
        assert m["cdcflow_outbox_to_kafka_latency_seconds_count"] == len(docs)
        assert 0 < m["cdcflow_outbox_to_kafka_latency_seconds_sum"] < 60 * len(docs)
        assert m["cdcflow_outbox_to_kafka_latency_seconds_bucket:le=+Inf"] == len(docs)
        assert m["cdcflow_tailer_batch_size_sum"] == len(docs) and m["cdcflow_tailer_batch_size_count"] >= 1
        assert m["cdcflow_tailer_leader"] == 1 and m["cdcflow_tailer_in_flight"] == 0
        assert 0 <= time.time() - m["cdcflow_tailer_checkpoint_timestamp_seconds"] < 60
        assert 0 <= m["cdcflow_tailer_lag_seconds"] < 60
        assert m["cdcflow_tailer_stream_restarts_total:catchup"] == 1  # the first start had no checkpoint
    finally:
        terminate(proc)
        reader.close()
        client.drop_database(db)
