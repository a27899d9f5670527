"""Stop and start the Kafka broker (a private one) mid-stream: the tailer waits, retries, loses nothing."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from cdc.mongo import mongo_client
from cdc.settings import Settings
from cdc.tailer import Tailer
from infra.servers.base import Server
from infra.servers.kafka import KafkaServer
from tests.helpers import unique, wait_for
from tests.integration.test_tailer_support import TopicReader, Writer, assert_per_aggregate_order, make_events

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def private_kafka(settings: Settings, kafka: Server) -> Iterator[tuple[KafkaServer, Settings]]:
    server = KafkaServer(settings, instance=unique("kafka_tailer"), port=28192, controller_port=28193)
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
    # Paced by the test, so that part of the stream is written while the broker is down, however fast the machine.
    writer = Writer(client[db].outbox, docs, batch=20, pause=0.02, allowed=1000)
    tailer = Tailer(settings, [db], client=client).start()
    try:
        writer.start()
        wait_for(lambda: client[db].outbox.count_documents({"published": True}) > 300, 60, what="progress")
        server.stop()
        checkpoint = client[settings.tailer_state_database]["checkpoints"]
        before = checkpoint.find_one({"_id": f"{db}.outbox"})
        writer.allow(2500)
        wait_for(lambda: writer.written >= 2500, 60, what="writes while the broker is down")
        # Nothing is acknowledged, so nothing more is marked published while the broker is away.
        published = client[db].outbox.count_documents({"published": True})
        server.ensure_running()
        writer.allow(len(docs))
        writer.join(120)
        assert writer.error is None
        outbox = tailer.outboxes[0]
        reader.wait_for({d["_id"] for d in docs}, timeout=180, diagnose=lambda: (
            f"tailer forwarded (acked) {outbox.forwarded}, in flight {len(outbox._inflight)}, sessions "
            f"{outbox.sessions}, published {client[db].outbox.count_documents({'published': True})}"))
        assert published < len(docs) and before is not None
        assert tailer.stop(60)
        reader.poll(0.5)
        assert_per_aggregate_order(reader.records)
        wait_for(lambda: client[db].outbox.count_documents({"published": False}) == 0, 30, what="all published")
    finally:
        tailer.stop(10)
        reader.close()
        client.drop_database(db)
        client.close()
