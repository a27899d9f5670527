"""Stop and start the Kafka broker (a private one) mid-stream: the tailer waits, retries, loses nothing; and a
SIGTERM while the broker is away still ends the tailer within its bound."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdc.checkpoint import CheckpointStore
from cdc.mongo import mongo_client
from cdc.settings import Settings
from cdc.tailer import Tailer
from infra.servers.base import Server
from infra.servers.kafka import KafkaServer
from tests.helpers import free_port, unique, wait_for
from tests.integration.test_tailer_support import (
    TopicReader,
    Writer,
    assert_per_aggregate_order,
    insert_events,
    make_events,
    scrape,
    spawn_tailer,
    terminate,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def private_kafka(settings: Settings, kafka: Server) -> Iterator[tuple[KafkaServer, Settings]]:
    server = KafkaServer(settings, instance=unique("kafka_tailer"), port=free_port(), controller_port=free_port())
    server.ensure_running()
    try:
        yield server, server.client_settings()
    finally:
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)


def test_broker_restart_mid_stream(settings: Settings, mongo: Server,
                                   private_kafka: tuple[KafkaServer, Settings]) -> None:
    server, settings = private_kafka
    client = mongo_client(settings)
    db, topic = unique("tail_kafka"), unique("tail_topic")
    docs = make_events(topic, aggregates=40, per_aggregate=100)
    reader = TopicReader(settings, topic)
    store = CheckpointStore(client[settings.tailer_state_database]["checkpoints"])
    # Paced by the test, so that part of the stream is written while the broker is down, however fast the machine.
    writer = Writer(client[db].outbox, docs, batch=20, pause=0.02, allowed=1000)
    tailer = Tailer(settings, [db], client=client).start()
    outbox = tailer.outboxes[0]
    try:
        writer.start()
        wait_for(lambda: outbox.forwarded > 300, 60, what="progress")
        server.stop()
        # Acknowledgements in flight when the broker went away have arrived (or never will) within a second.
        time.sleep(1.0)
        forwarded, before = outbox.forwarded, store.load(f"{db}.outbox")
        writer.allow(2500)
        wait_for(lambda: writer.written >= 2500, 60, what="writes while the broker is down")
        wait_for(lambda: outbox.session is not None and len(outbox.session.inflight) > 0, 30,
                 what="events read (and sent) while the broker is down")
        # Read, sent, but not acknowledged: neither the count nor the checkpoint moves past them.
        assert outbox.forwarded == forwarded
        after = store.load(f"{db}.outbox")
        assert (after.token, after.watermark) == (before.token, before.watermark)
        assert after.watermark is not None and after.watermark < max(d["occurred_at"] for d in docs[:2500])
        server.ensure_running()
        writer.allow(len(docs))
        writer.join(120)
        assert writer.error is None
        reader.wait_for({d["_id"] for d in docs}, timeout=180, diagnose=lambda: (
            f"tailer forwarded (acked) {outbox.forwarded}, sessions {outbox.sessions}"))
        assert tailer.stop(60)
        reader.poll(0.5)
        assert_per_aggregate_order(reader.records)
        # Everything acknowledged in the end: the watermark is the newest event.
        assert store.load(f"{db}.outbox").watermark == max(d["occurred_at"] for d in docs)
    finally:
        tailer.stop(10)
        reader.close()
        client.drop_database(db)
        client.close()


def test_sigterm_with_the_broker_down_ends_within_the_bound(
    mongo: Server, private_kafka: tuple[KafkaServer, Settings], tmp_path: Path
) -> None:
    server, settings = private_kafka
    bound = 6.0
    client = mongo_client(settings)
    db, topic = unique("tail_kstop"), unique("tail_topic")
    key, port = f"{db}.outbox", free_port()
    first, second = make_events(topic, 10, 10), make_events(topic, 10, 10)
    reader = TopicReader(settings, topic)
    store = CheckpointStore(client[settings.tailer_state_database]["checkpoints"])
    log = tmp_path / "tail.log"
    env = {"CDCFLOW_TAILER_STOP_TIMEOUT_SECONDS": str(bound), "CDCFLOW_TAILER_METRICS_PORT": str(port)}
    proc = spawn_tailer(settings, [db], log, **env)
    try:
        wait_for(lambda: store.load(key).token, 60, what="first checkpoint")
        insert_events(client[db].outbox, first)
        reader.wait_for({d["_id"] for d in first}, timeout=60)
        wait_for(lambda: store.load(key).watermark == max(d["occurred_at"] for d in first), 30,
                 what="the first events checkpointed")
        server.stop()
        insert_events(client[db].outbox, second)
        wait_for(lambda: scrape(port, key).get("cdcflow_events_total:read") == len(first) + len(second), 30,
                 what="the tailer reading events it cannot send")
        started = time.monotonic()
        code = terminate(proc, timeout=bound + 30)
        took = time.monotonic() - started
        assert took <= bound + 3.0, f"SIGTERM took {took:.1f}s (bound {bound}s); log: {log.read_text()[-2000:]}"
        assert code == 0, log.read_text()[-2000:]
        # The last acknowledged position is checkpointed; nothing unacknowledged is.
        assert store.load(key).watermark == max(d["occurred_at"] for d in first)
        server.ensure_running()
        proc = spawn_tailer(settings, [db], log)
        reader.wait_for({d["_id"] for d in first + second}, timeout=120)
    finally:
        if proc.poll() is None:
            terminate(proc)
        reader.close()
        client.drop_database(db)
        client.close()
